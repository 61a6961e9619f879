"""The training loop on a tiny ImageFolder: the loss falls, resume continues where it stopped,
evaluation counts every sample, checkpoints hold what they claim."""
import json
import os
import shutil

import numpy as np
import pytest

from conftest import tiny_config
from src.data.imagefolder import DataError, build_dataset
from src.engine.checkpoint import load_training_checkpoint
from src.engine.evaluate import evaluate
from src.engine.trainer import train
from src.models import build_model


def test_eta_format():
    from src.engine.trainer import format_duration
    assert format_duration(3725) == '1:02:05' and format_duration(2 * 86400 + 3 * 3600 + 4 * 60 + 5) == '2d 03:04:05'


def test_training_lowers_the_loss_and_writes_outputs(tiny_imagefolder, tmp_path):
    cfg = tiny_config(tiny_imagefolder, tmp_path, epochs=4, eval_interval=2, keep_checkpoint_max=2)
    history = train(cfg)
    assert [r['epoch'] for r in history] == [1, 2, 3, 4]
    assert history[-1]['train_loss'] < history[0]['train_loss']
    assert 'val_top1' in history[1] and 'val_top1' not in history[0] and 'val_top1' in history[3]
    ckpts = sorted(os.listdir(tmp_path / 'checkpoints'))
    assert ckpts == ['best.ckpt', 'epoch_003.ckpt', 'epoch_004.ckpt']  # keep-last-2 plus best
    assert json.loads((tmp_path / 'metrics.json').read_text()) == history
    assert 'epoch 4/4 step 3/3 loss' in (tmp_path / 'train.log').read_text()


def test_resume_continues_at_saved_epoch_and_lr(tiny_imagefolder, tmp_path):
    full_dir, resumed_dir = tmp_path / 'full', tmp_path / 'resumed'
    full = train(tiny_config(tiny_imagefolder, full_dir, epochs=3, eval_interval=0))
    # A run that stopped after epoch 1: its checkpoint and metrics, nothing else.
    os.makedirs(resumed_dir / 'checkpoints')
    shutil.copy(full_dir / 'checkpoints' / 'epoch_001.ckpt', resumed_dir / 'checkpoints')
    (resumed_dir / 'metrics.json').write_text(json.dumps(full[:1]))
    resumed = train(tiny_config(tiny_imagefolder, resumed_dir, epochs=3, eval_interval=0, resume='auto'))
    assert [r['epoch'] for r in resumed] == [1, 2, 3]
    for a, b in zip(full[1:], resumed[1:]):
        assert a['lr'] == b['lr']
        np.testing.assert_allclose(a['train_loss'], b['train_loss'], rtol=1e-5)

    net = build_model(tiny_config(tiny_imagefolder, tmp_path))
    meta = load_training_checkpoint(str(full_dir / 'checkpoints' / 'epoch_002.ckpt'), net)
    assert meta['epoch'] == 2


def test_a_run_resumed_with_another_batch_size_continues_its_own_schedule(tiny_imagefolder, tmp_path):
    """From an epoch checkpoint of a run with other steps per epoch (the batch halved: 3 steps an
    epoch, then 6), the learning rate is this run's schedule at the saved epoch, as the official loop's
    scheduler (called with epoch * steps + step) has it; AdamW's bias correction counts the updates
    applied."""
    from src.engine.checkpoint import read_training_checkpoint, split_training_checkpoint
    run = dict(eval_interval=0, optimizer='adamw')
    train(tiny_config(tiny_imagefolder, tmp_path, epochs=1, **run))
    train(tiny_config(tiny_imagefolder, tmp_path, epochs=3, batch_size=4, resume='auto', **run))
    _, saved, _ = split_training_checkpoint(read_training_checkpoint(str(tmp_path / 'checkpoints' / 'epoch_003.ckpt')))
    assert saved['global_step'].asnumpy().tolist() == [3 * 6]  # the end of this run's table
    assert saved['adam_step'].asnumpy().tolist() == [3 + 2 * 6]
    assert ('epoch_001.ckpt was saved by a run of 3 steps an epoch, this one has 6 (batch_size, '
            "accumulation_steps or device count changed): the learning-rate schedule is this run's, continued "
            'after the end of epoch 1') in (tmp_path / 'train.log').read_text()


def test_ema_turned_on_at_a_resume_is_reported_in_the_log(tiny_imagefolder, tmp_path):
    train(tiny_config(tiny_imagefolder, tmp_path, epochs=1, eval_interval=0))
    train(tiny_config(tiny_imagefolder, tmp_path, epochs=2, eval_interval=0, ema=True, resume='auto'))
    assert ('epoch_001.ckpt has no EMA weights (saved without ema): the average starts at its weights'
            in (tmp_path / 'train.log').read_text())


def test_evaluate_counts_every_sample(tiny_imagefolder, tmp_path):
    cfg = tiny_config(tiny_imagefolder, tmp_path, eval_batch_size=5)  # 12 val images: 5 + 5 + 2
    net = build_model(cfg)
    net.set_train(False)
    got = evaluate(net, build_dataset(cfg, 'val'))
    # Hand count over the same images in one batch.
    whole = build_dataset(tiny_config(tiny_imagefolder, tmp_path, eval_batch_size=12), 'val')
    images, labels = next(whole.create_tuple_iterator(num_epochs=1))
    logits, labels = net(images).asnumpy(), labels.asnumpy()
    top1 = np.mean(logits.argmax(1) == labels)
    top2 = np.argsort(-logits, 1)[:, :2]
    assert got['count'] == 12
    assert got['top1'] == pytest.approx(top1)
    assert got['top5'] == 1.0  # 3 classes: the top 3 always holds the label
    shifted = logits - logits.max(1, keepdims=True)
    loss = np.mean(np.log(np.exp(shifted).sum(1)) - shifted[np.arange(12), labels])
    assert got['loss'] == pytest.approx(loss, rel=1e-4)
    assert top2.shape == (12, 2)


def test_validation_shards_hold_every_image_once(tiny_imagefolder, tmp_path):
    # 12 images over 5 ranks: shards of 3, 3, 2, 2, 2, each in the full set's order
    cfg = tiny_config(tiny_imagefolder, tmp_path, eval_batch_size=2)

    def rows(rank=0, group_size=1):
        data = build_dataset(cfg, 'val', rank, group_size)
        batches = data.create_tuple_iterator(num_epochs=1, output_numpy=True)
        return [(label, image.tobytes()) for images, labels in batches for image, label in zip(images, labels)]

    whole = rows()
    shards = [rows(r, 5) for r in range(5)]
    assert [len(s) for s in shards] == [3, 3, 2, 2, 2]
    for r, shard in enumerate(shards):
        assert shard == whole[r::5]
    with pytest.raises(DataError, match='fewer than the 13 ranks'):
        build_dataset(cfg, 'val', 0, 13)


def test_train_and_val_class_mismatch_is_an_error(tmp_path):
    from conftest import write_tiny_imagefolder
    root = write_tiny_imagefolder(str(tmp_path / 'data'))
    os.rename(os.path.join(root, 'val', 'class_2'), os.path.join(root, 'val', 'class_x'))
    with pytest.raises(DataError, match=r"only in train \['class_2'\], only in val \['class_x'\]"):
        train(tiny_config(root, tmp_path / 'out'))


def test_training_with_operator_fusion_gives_the_same_losses(tiny_imagefolder, tmp_path):
    """jit_level O1 (fusion) compiles the training step and evaluation on CPU and trains the same model."""
    fused = train(tiny_config(tiny_imagefolder, tmp_path / 'o1', epochs=2, jit_level='O1'))
    plain = train(tiny_config(tiny_imagefolder, tmp_path / 'o0', epochs=2))
    for a, b in zip(fused, plain):
        np.testing.assert_allclose(a['train_loss'], b['train_loss'], rtol=1e-4)
        assert a['val_top1'] == b['val_top1']


def test_cpu_dispatch_runs_on_the_calling_thread_unless_the_environment_says_otherwise():
    """On CPU setup_context turns on MindSpore's single-threaded dispatch (its waiting thread would
    otherwise spin on a core the kernels need), before anything runs; an explicit value is kept."""
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = ('import os, src; from src.engine.context import HOST_BLOCKING_ENV, setup_context; '
            "setup_context('CPU'); print(os.environ.get(HOST_BLOCKING_ENV))")
    for given, expected in ((None, '1'), ('0', '0')):
        env = {k: v for k, v in os.environ.items() if k != 'MS_DEV_HOST_BLOCKING_RUN'}
        if given is not None:
            env['MS_DEV_HOST_BLOCKING_RUN'] = given
        proc = subprocess.run([sys.executable, '-c', code], cwd=root, env=env, capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert proc.stdout.split()[-1] == expected


def test_device_settings_reach_mindspore(tiny_imagefolder, tmp_path):
    """max_device_memory is set once per process (a subprocess here); ascend_precision_mode is noted
    and ignored off Ascend."""
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = ('import src; from src.engine.context import setup_context; '
            'from mindspore._c_expression import RuntimeConf; '
            "assert not RuntimeConf.get_instance().is_memory_configured(); "
            "setup_context('CPU', max_device_memory='3GB', precision_mode='must_keep_origin_dtype'); "
            "setup_context('CPU', max_device_memory='3GB'); "  # the same value again: no error
            "assert RuntimeConf.get_instance().is_memory_configured()")
    proc = subprocess.run([sys.executable, '-c', code], cwd=root, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert 'ascend_precision_mode applies to Ascend only; ignored on CPU' in proc.stderr
    code = ('import src; from src.engine.context import setup_context; '
            "setup_context('CPU', max_device_memory='3GB'); setup_context('CPU', max_device_memory='4GB')")
    proc = subprocess.run([sys.executable, '-c', code], cwd=root, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and 'max_device_memory is 3GB in this process already' in proc.stderr
