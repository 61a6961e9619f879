"""Faults of the machine, made real where the test can: a full disk and a read-only folder are tmpfs
mounts in a private user and mount namespace (`unshare`, as an unprivileged user can on most Linux
machines; the tests that need one are skipped where it is refused), a damaged checkpoint is a
truncated file. Each checks the one `error:` line, the exit code, that no temporary file is left and
that the last good checkpoint still loads."""
import errno
import json
import logging
import os
import shlex
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT, error_lines, tiny_config, train_command
from src.engine.checkpoint import (
    ResumeError,
    load_training_checkpoint,
    read_training_checkpoint,
    save_training_checkpoint,
)
from src.engine.optim import build_optimizer
from src.engine.trainer import train
from src.fileio import LogFileHandler, OutputWriteError, atomic_write, write_text
from src.models import build_model
from src.models.weights import CheckpointReadError, read_checkpoint


def _namespace_works():
    if shutil.which('unshare') is None:
        return False
    probe = subprocess.run(['unshare', '--user', '--map-root-user', '--mount', 'sh', '-c',
                            'mount -t tmpfs -o size=64k tmpfs /mnt'], capture_output=True)
    return probe.returncode == 0


needs_namespace = pytest.mark.skipif(not _namespace_works(),
                                     reason='unshare cannot create a user and mount namespace here')


def _in_namespace(script, timeout=600):
    """Run a shell script as root of a private user + mount namespace: its mounts vanish with it."""
    env = dict(os.environ, PYTHONPATH=ROOT, GLOG_v='3')
    return subprocess.run(['unshare', '--user', '--map-root-user', '--mount', 'bash', '-euc', script], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=timeout)


def _train_command(data_dir, output_dir, *extra):
    return train_command(data_dir, output_dir, '--lr', '0.5', *extra)


def _shell(command):
    return ' '.join(shlex.quote(a) for a in command)


def _temporaries(folder):
    return [name for root, _, names in os.walk(folder) for name in names if '.partial' in name]


def _loads(tiny_imagefolder, tmp_path, path):
    cfg = tiny_config(tiny_imagefolder, tmp_path / 'check')
    net = build_model(cfg)
    optimizer = build_optimizer(net, cfg.optimizer, [0.1], cfg.weight_decay, cfg.momentum, cfg.no_decay_1d)
    return load_training_checkpoint(str(path), net, optimizer)


@needs_namespace
def test_disk_full_during_a_checkpoint_save(tiny_imagefolder, tmp_path):
    # A file system with room for one training checkpoint and a half: epoch 1's fits, epoch 2's not.
    cfg = tiny_config(tiny_imagefolder, tmp_path / 'probe')
    net = build_model(cfg)
    optimizer = build_optimizer(net, cfg.optimizer, [0.1], cfg.weight_decay, cfg.momentum, cfg.no_decay_1d)
    size = os.path.getsize(save_training_checkpoint(str(tmp_path / 'probe.ckpt'), net, optimizer, {'epoch': 1}))
    out, kept = tmp_path / 'out', tmp_path / 'kept'
    out.mkdir()
    command = _shell(_train_command(tiny_imagefolder, out, '--epochs', '3'))
    run = _in_namespace(f'''
        mount -t tmpfs -o size={size * 3 // 2} tmpfs {out}
        set +e; {command} > {tmp_path}/stdout 2> {tmp_path}/stderr; echo $? > {tmp_path}/rc
        set -e; cp -a {out} {kept}''')
    assert run.returncode == 0, run.stderr
    stderr = (tmp_path / 'stderr').read_text()
    assert (tmp_path / 'rc').read_text().strip() == '1', stderr[-3000:]
    assert 'Traceback' not in stderr
    first = kept / 'checkpoints' / 'epoch_001.ckpt'
    assert error_lines(stderr) == [f'error: cannot write {out / "checkpoints" / "epoch_002.ckpt"}: No space left on '
                                    f'device; last complete checkpoint: {out / "checkpoints" / "epoch_001.ckpt"}']
    assert sorted(os.listdir(kept / 'checkpoints')) == ['epoch_001.ckpt']
    assert _temporaries(kept) == []
    assert _loads(tiny_imagefolder, tmp_path, first)['epoch'] == 1
    assert [r['epoch'] for r in json.loads((kept / 'metrics.json').read_text())] == [1, 2]  # resume trims epoch 2


@needs_namespace
def test_read_only_output_folder_fails_before_the_first_step(tiny_imagefolder, tmp_path):
    out = tmp_path / 'out'
    train(tiny_config(tiny_imagefolder, out, epochs=1, eval_interval=0))
    command = _shell(_train_command(tiny_imagefolder, out, '--epochs', '2', '--resume', 'auto'))
    run = _in_namespace(f'''
        mount --bind {out} {out} && mount -o remount,ro,bind {out}
        {command}''')
    assert run.returncode == 1, run.stderr[-3000:]
    assert error_lines(run.stderr) == [f'error: cannot write in the folder {out}: Read-only file system']
    assert 'epoch 1/' not in run.stdout and 'Traceback' not in run.stderr
    assert _temporaries(out) == []
    assert _loads(tiny_imagefolder, tmp_path, out / 'checkpoints' / 'epoch_001.ckpt')['epoch'] == 1


def test_output_folder_below_a_file_fails_before_the_first_step(tiny_imagefolder, tmp_path):
    (tmp_path / 'a_file').write_text('')
    out = tmp_path / 'a_file' / 'out'
    run = subprocess.run(_train_command(tiny_imagefolder, out, '--epochs', '1'), cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 1, run.stderr[-3000:]
    assert error_lines(run.stderr) == [f'error: cannot create the folder {out}: {out.parent} is a file']
    assert 'Traceback' not in run.stderr and 'epoch 1/' not in run.stdout


def test_a_refused_write_leaves_no_temporary_file(tmp_path):
    target = tmp_path / 'metrics.json'
    write_text(str(target), 'old')

    def fill_then_fail(tmp):
        with open(tmp, 'w') as f:
            f.write('half')
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    with pytest.raises(OutputWriteError) as info:
        atomic_write(str(target), fill_then_fail)
    assert str(info.value) == f'cannot write {target}: No space left on device'
    assert os.listdir(tmp_path) == ['metrics.json'] and target.read_text() == 'old'


def test_stale_temporary_files_are_removed_at_start(tiny_imagefolder, tmp_path, capsys):
    (tmp_path / 'checkpoints').mkdir()
    stale = [tmp_path / 'checkpoints' / '.epoch_002.ckpt.0123abcd.partial.tmp',
             tmp_path / 'checkpoints' / '.epoch_002.ckpt.k2j4_x9a.tmp.tmp',  # an older version's name
             tmp_path / '.metrics.json.89abcdef.partial']
    for path in stale:
        path.write_bytes(b'half a file')
    keep = tmp_path / 'checkpoints' / 'notes.tmp'  # not ours: left alone
    keep.write_text('')
    train(tiny_config(tiny_imagefolder, tmp_path, epochs=1, eval_interval=0))
    out = capsys.readouterr().out
    for path in stale:
        assert not path.exists() and f'removed {path}, left by an interrupted write' in out
    assert keep.exists()


def test_a_log_write_the_disk_refuses_is_an_error():
    logger = logging.getLogger('acmix.test_faults')
    handler = LogFileHandler('/dev/full')  # every write: ENOSPC
    logger.addHandler(handler)
    try:
        with pytest.raises(OutputWriteError, match='^cannot write /dev/full: No space left on device$'):
            logger.warning('a line')
    finally:
        logger.removeHandler(handler)
        handler.stream = None  # closing would flush into /dev/full again


@needs_namespace
def test_export_to_a_full_disk(tmp_path):
    out = tmp_path / 'small'
    out.mkdir()
    run = _in_namespace(f"""
        mount -t tmpfs -o size=64k tmpfs {out}
        set +e; {shlex.quote(sys.executable)} export.py --arch resnet_mini --num_classes 3 --image_size 32 \
            --file_name {out}/resnet_mini; echo "exit code $?, files: [$(ls -A {out})]" """)
    assert error_lines(run.stderr) == [f'error: cannot write {out}/resnet_mini.mindir: No space left on device']
    assert 'exit code 1, files: []' in run.stdout and 'Traceback' not in run.stderr


def _truncate(path):
    data = path.read_bytes()
    os.chmod(path, 0o600)
    path.write_bytes(data[:len(data) // 2])


@pytest.mark.slow
def test_truncated_newest_checkpoint_resume_auto_takes_the_one_before(tiny_imagefolder, tmp_path):
    train(tiny_config(tiny_imagefolder, tmp_path, epochs=2, eval_interval=0))
    newest = tmp_path / 'checkpoints' / 'epoch_002.ckpt'
    _truncate(newest)
    truncated_size = newest.stat().st_size
    with pytest.raises(CheckpointReadError, match='truncated, damaged or not a MindSpore checkpoint'):
        read_checkpoint(str(newest))

    run = subprocess.run(_train_command(tiny_imagefolder, tmp_path, '--epochs', '3', '--resume', 'auto'),
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    log = run.stdout + run.stderr
    assert (f'resume=auto: cannot read the checkpoint {newest} ({truncated_size} bytes): it is truncated, '
            'damaged or not a MindSpore checkpoint; trying the one before it') in log
    assert f"resumed from {tmp_path / 'checkpoints' / 'epoch_001.ckpt'}: 1 epochs done" in log
    assert [r['epoch'] for r in json.loads((tmp_path / 'metrics.json').read_text())] == [1, 2, 3]
    assert _temporaries(tmp_path) == []
    assert _loads(tiny_imagefolder, tmp_path, newest)['epoch'] == 2  # rewritten whole by the resumed run

    # eval.py on a damaged file: one error line naming it, exit code 2 (bad input).
    damaged = tmp_path / 'damaged.ckpt'
    damaged.write_bytes(b'')
    run = subprocess.run([sys.executable, 'eval.py', '--arch', 'resnet_mini', '--num_classes', '3', '--image_size',
                          '32', '--data_dir', tiny_imagefolder, '--checkpoint', str(damaged)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 2
    assert error_lines(run.stderr) == [f'error: cannot read the checkpoint {damaged} (0 bytes): it is truncated, '
                                        'damaged or not a MindSpore checkpoint']


def test_resume_auto_refuses_to_skip_recorded_epochs(tiny_imagefolder, tmp_path):
    train(tiny_config(tiny_imagefolder, tmp_path, epochs=3, eval_interval=0))
    for epoch in (2, 3):
        _truncate(tmp_path / 'checkpoints' / f'epoch_00{epoch}.ckpt')
    with pytest.raises(ResumeError) as info:
        train(tiny_config(tiny_imagefolder, tmp_path, epochs=4, eval_interval=0, resume='auto'))
    message = str(info.value)
    assert 'metrics.json records 3 epochs but the newest readable checkpoint is ' in message
    assert 'epoch_001.ckpt (unreadable: epoch_003.ckpt, epoch_002.ckpt)' in message
    assert 'retrain epochs 2-3' in message and '--resume PATH' in message
    assert [r['epoch'] for r in json.loads((tmp_path / 'metrics.json').read_text())] == [1, 2, 3]  # untouched
    # Named explicitly, the older checkpoint is taken, and the log says what it replaces.
    history = train(tiny_config(tiny_imagefolder, tmp_path, epochs=4, eval_interval=0,
                                resume=str(tmp_path / 'checkpoints' / 'epoch_001.ckpt')))
    assert [r['epoch'] for r in history] == [1, 2, 3, 4]
    log = (tmp_path / 'train.log').read_text()
    assert 'metrics.json records epochs up to 3; this run retrains epochs 2-3 and replaces them' in log
    for epoch in (2, 3):  # the replaced run's checkpoints go before this run writes its own
        assert f"removed {tmp_path / 'checkpoints' / f'epoch_00{epoch}.ckpt'}: it is past where this run starts" in log


def test_a_checkpoint_cut_at_a_record_boundary_is_not_resumed_from(tmp_path):
    # MindSpore parses a file cut between two records without complaint (its CRC is checked only when
    # the CRC record is there). Training metadata goes last, so such a cut loses it first.
    import mindspore as ms
    from mindspore import nn
    path = tmp_path / 'epoch_001.ckpt'
    save_training_checkpoint(str(path), nn.Dense(2, 2), None, {'best_top1': 0.5, 'epoch': 1})
    data = path.read_bytes()
    os.chmod(path, 0o600)
    names = []
    for cut in range(len(data) - 1, 0, -1):  # the longest prefix MindSpore reads that lacks the last record
        path.write_bytes(data[:cut])
        try:
            names = list(ms.load_checkpoint(str(path)))
        except ValueError:
            continue
        if 'meta.epoch' not in names:
            break
    assert names == ['weight', 'bias', 'meta.best_top1'], names
    with pytest.raises(CheckpointReadError, match='it has no training metadata'):
        read_training_checkpoint(str(path))


def test_a_new_run_does_not_start_over_an_earlier_runs_checkpoints(tiny_imagefolder, tmp_path):
    train(tiny_config(tiny_imagefolder, tmp_path, epochs=1, eval_interval=0))
    before = sorted(os.listdir(tmp_path / 'checkpoints'))
    with pytest.raises(ResumeError, match=r'holds the checkpoints of an earlier run \(newest: epoch_001\.ckpt\); '
                                          'continue it with --resume auto'):
        train(tiny_config(tiny_imagefolder, tmp_path, epochs=2, eval_interval=0))
    assert sorted(os.listdir(tmp_path / 'checkpoints')) == before
