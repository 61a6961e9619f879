"""Faults that must not cost a run: odd image modes, a non-finite loss, a killed process; and the
progress display that stays out of logs."""
import io
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT, tiny_config, train_command, write_tiny_imagefolder
from src.data.imagefolder import build_dataset, imagenet_class_names
from src.engine.trainer import TrainingError, train
from src.progress import Progress

pytestmark = pytest.mark.slow  # training runs stopped and resumed


def test_grayscale_palette_rgba_and_cmyk_images_become_rgb(tmp_path):
    from mindspore.dataset import vision
    from PIL import Image
    rng = np.random.default_rng(0)
    folder = tmp_path / 'data' / 'val' / 'a'
    folder.mkdir(parents=True)
    images = {'gray.png': Image.fromarray(rng.integers(0, 255, (40, 40), np.uint8), 'L'),
              'gray.jpg': Image.fromarray(rng.integers(0, 255, (40, 40), np.uint8), 'L'),
              'palette.png': Image.fromarray(rng.integers(0, 255, (40, 40), np.uint8), 'L').convert('P'),
              'rgba.png': Image.fromarray(rng.integers(0, 255, (40, 40, 4), np.uint8), 'RGBA'),
              'cmyk.jpg': Image.fromarray(rng.integers(0, 255, (40, 40, 4), np.uint8), 'CMYK')}
    for name, img in images.items():
        img.save(folder / name)
        decoded = vision.Decode()(np.fromfile(folder / name, np.uint8))
        expected = np.asarray(Image.open(folder / name).convert('RGB'), np.int32)
        assert decoded.shape == (40, 40, 3), name
        assert np.abs(decoded.astype(np.int32) - expected).max() <= 1, name  # CMYK conversion rounds
    for pipeline in ('official', 'fast'):  # PIL's decoder, MindSpore's
        cfg = tiny_config(str(tmp_path / 'data'), tmp_path, num_classes=1, eval_batch_size=5, eval_pipeline=pipeline)
        batch, _ = next(build_dataset(cfg, 'val').create_tuple_iterator(output_numpy=True))
        assert batch.shape == (5, 3, 32, 32) and np.isfinite(batch).all()


def test_non_finite_loss_stops_naming_step_and_last_checkpoint(tiny_imagefolder, tmp_path):
    train(tiny_config(tiny_imagefolder, tmp_path, epochs=1, eval_interval=0))
    # Resumed with an absurd learning rate, the weights blow up within the next epoch.
    cfg = tiny_config(tiny_imagefolder, tmp_path, epochs=3, eval_interval=0, resume='auto', lr=1e30)
    with pytest.raises(TrainingError) as info:
        train(cfg)
    message = str(info.value)
    assert message.startswith('loss is ') and 'at epoch 2, step ' in message
    assert 'last good checkpoint: ' + str(tmp_path / 'checkpoints' / 'epoch_001.ckpt') in message
    assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['best.ckpt', 'epoch_001.ckpt']  # nothing newer
    assert [r['epoch'] for r in json.loads((tmp_path / 'metrics.json').read_text())] == [1]


def _train_argv(data_dir, output_dir):
    # Updates of 2 micro-batches of 4 with a weight EMA validated every epoch: resuming must restore
    # the average and the position in the schedule, which counts updates.
    return train_command(data_dir, output_dir, '--hflip', '0', '--scale_min', '0.8', '--lr', '0.8', '--epochs', '4',
                         '--label_smoothing', '0', '--seed', '3', '--batch_size', '4', '--accumulation_steps', '2',
                         '--ema', 'true', '--ema_decay', '0.8', '--eval_interval', '1')


@pytest.fixture(scope='module')
def interruption_data(tmp_path_factory):
    """The dataset of the interruption tests, and the per-epoch losses of an uninterrupted run."""
    root = tmp_path_factory.mktemp('interruptions')
    data = write_tiny_imagefolder(str(root / 'data'), classes=3, train_per_class=24, val_per_class=2)
    full = subprocess.run(_train_argv(data, root / 'full'), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert full.returncode == 0, full.stderr[-2000:]
    return data, _losses(root / 'full')


def _losses(folder):
    """Per epoch: the mean training loss and the EMA weights' validation top-1 and loss."""
    return [(r['epoch'], r['train_loss'], r['ema_val_top1'], r['ema_val_loss'])
            for r in json.loads((folder / 'metrics.json').read_text())]


def _signal_when_logged(argv, log, line, signum):
    """Start a training run, send it `signum` once its train.log shows `line`; returns its exit code."""
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if log.exists() and line in log.read_text():
            proc.send_signal(signum)
            break
        time.sleep(0.02)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err


def test_kill_9_then_resume_gives_the_uninterrupted_losses(interruption_data, tmp_path):
    data, uninterrupted = interruption_data
    # Killed in the middle of epoch 3, when epoch 2's checkpoint is on disk.
    code, _, _ = _signal_when_logged(_train_argv(data, tmp_path), tmp_path / 'train.log', 'epoch 3/4 step 2/',
                                     signal.SIGKILL)
    assert code == -signal.SIGKILL, 'the run ended before it could be killed'
    assert not (tmp_path / 'checkpoints' / 'epoch_004.ckpt').exists()

    resumed = subprocess.run(_train_argv(data, tmp_path) + ['--resume', 'auto'], cwd=ROOT, capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert 'resumed from ' in resumed.stdout and 'epoch_002.ckpt' in resumed.stdout
    assert _losses(tmp_path) == uninterrupted  # exactly: CPU, fixed seed, epoch-seeded data


def test_sigterm_mid_epoch_saves_the_position_and_resume_gives_the_uninterrupted_losses(interruption_data, tmp_path):
    data, uninterrupted = interruption_data
    code, out, err = _signal_when_logged(_train_argv(data, tmp_path), tmp_path / 'train.log', 'epoch 2/4 step 1/',
                                         signal.SIGTERM)
    assert code == 0, err[-2000:]
    stopped = re.search(r'stopped by SIGTERM at epoch 2, step (\d) of 9; checkpoint (\S+)\.', out)
    assert stopped, out[-2000:]
    step = int(stopped.group(1))  # 9 too: the last step's checkpoint comes before the epoch's validation
    assert stopped.group(2) == str(tmp_path / 'checkpoints' / f'epoch_002_step_{step:06d}.ckpt')
    assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['best.ckpt', 'epoch_001.ckpt',
                                                           f'epoch_002_step_{step:06d}.ckpt']
    assert 'to continue: python train.py ' in out and out.rstrip().endswith('--resume auto')
    assert _losses(tmp_path) == uninterrupted[:1]

    resumed = subprocess.run(_train_argv(data, tmp_path) + ['--resume', 'auto'], cwd=ROOT, capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f'continuing after step {step} of epoch 2' in resumed.stdout
    assert f'epoch 2/4 step {step}/9' not in resumed.stdout and ('epoch 2/4 step 9/9' in resumed.stdout) == (step < 9)
    assert _losses(tmp_path) == uninterrupted  # the interrupted epoch's mean loss too
    assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['best.ckpt', 'epoch_002.ckpt', 'epoch_003.ckpt',
                                                           'epoch_004.ckpt']


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_is_quiet_unless_on_a_terminal():
    piped = io.StringIO()
    progress = Progress('eval', 'batches', stream=piped)
    for i in range(1, 4):
        progress.update(i, 3)
    progress.close()
    assert piped.getvalue() == ''
    terminal = _Terminal()
    progress = Progress('eval', 'batches', stream=terminal, min_interval=0)
    for i in range(1, 4):
        progress.update(i, 3, 'note')
    progress.close()
    text = terminal.getvalue()
    assert text.count('\r') == 3 and 'eval 3/3 batches' in text and text.endswith('\n')


def test_imagenet_class_names_in_synset_order():
    names = imagenet_class_names()
    assert len(names) == 1000 == len(set(names))
    assert names[0] == 'tench' and names[1] == 'goldfish' and names[999] == 'toilet tissue'


STOP_REQUEST_WORKER = """
import os, signal, sys
sys.path.insert(0, os.getcwd())
from src.engine.preemption import StopRequest
with StopRequest() as stop:
    print('before', stop.stop_now(), flush=True)
    os.kill(os.getpid(), signal.SIGINT)  # handled at once: the process signals itself
    print('after one', stop.stop_now(), stop.reason, flush=True)
    os.kill(os.getpid(), signal.SIGTERM)
    print('still alive', flush=True)
"""


def test_a_second_signal_ends_the_process_at_once():
    run = subprocess.run([sys.executable, '-c', STOP_REQUEST_WORKER], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert run.stdout.splitlines() == ['before False', 'after one True SIGINT'], run.stdout + run.stderr
    assert run.returncode == -signal.SIGTERM
