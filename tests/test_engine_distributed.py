"""Data parallelism for real: train.py under msrun with 2 CPU workers over 127.0.0.1. With data
parallelism both ranks end with identical weights; without it (data_parallel=false, each rank on
its own shard) they differ, so the first result is not an accident. Under loss scaling both ranks
skip the same steps, and the overflow decision they share is the reduction of their local ones."""
import json
import os
import re
import shutil
import socket
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MSRUN = os.path.join(os.path.dirname(sys.executable), 'msrun')
needs_msrun = pytest.mark.skipif(not os.path.exists(MSRUN) and shutil.which('msrun') is None,
                                 reason='msrun not installed')


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _msrun(script_and_args, out_dir):
    """Run a script on 2 msrun workers in out_dir; returns the workers' logs, concatenated."""
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get('PATH', ''),
               PYTHONPATH=ROOT, GLOG_v='3')
    log_dir = os.path.join(out_dir, 'msrun_log')
    os.makedirs(out_dir, exist_ok=True)
    cmd = [MSRUN, '--worker_num=2', '--local_worker_num=2', '--master_addr=127.0.0.1',
           f'--master_port={_free_port()}', f'--log_dir={log_dir}', '--join=True'] + list(script_and_args)
    proc = subprocess.run(cmd, cwd=out_dir, env=env, capture_output=True, text=True, timeout=600)
    logs = ''
    for name in sorted(os.listdir(log_dir)):
        if name.startswith('worker'):
            with open(os.path.join(log_dir, name)) as f:
                logs += f.read()
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:] + logs[-3000:]
    return logs


def _run_msrun(data_dir, out_dir, data_parallel, *extra_args):
    """train.py on 2 workers; returns {rank: what its final line says after the weights fingerprint}."""
    logs = _msrun([os.path.join(ROOT, 'train.py'), '--arch', 'resnet_mini', '--num_classes', '3', '--image_size', '32',
                   '--data_dir', data_dir, '--batch_size', '4', '--epochs', '2', '--warmup_epochs', '0', '--lr', '0.5',
                   '--crop_pct', '1.0', '--num_workers', '1', '--eval_interval', '0', '--output_dir', out_dir,
                   '--data_parallel', str(data_parallel).lower(), *extra_args], out_dir)
    prints = dict(re.findall(r'rank (\d)/2: final weights fingerprint (.+)', logs))
    assert sorted(prints) == ['0', '1'], logs[-3000:]
    return prints


@needs_msrun
def test_msrun_data_parallel_keeps_ranks_in_sync(tiny_imagefolder, tmp_path):
    synced = _run_msrun(tiny_imagefolder, str(tmp_path / 'dp'), True)
    assert synced['0'] == synced['1']
    independent = _run_msrun(tiny_imagefolder, str(tmp_path / 'no_dp'), False)
    assert independent['0'] != independent['1']
    # Only rank 0 writes checkpoints and logs: one log line per epoch end, not two.
    assert sorted(os.listdir(tmp_path / 'dp' / 'checkpoints')) == ['best.ckpt', 'epoch_001.ckpt', 'epoch_002.ckpt']
    log = (tmp_path / 'dp' / 'train.log').read_text()
    assert log.count('epoch 2/2 step') == 1 and '2 device(s)' in log


@needs_msrun
def test_msrun_loss_scaling_skips_the_same_steps_on_every_rank(tiny_imagefolder, tmp_path):
    # fp16 (O2) from a scale its gradients overflow at: the first steps are skipped, the later applied.
    finals = _run_msrun(tiny_imagefolder, str(tmp_path), True, '--amp_level', 'O2', '--loss_scale', '1048576.0')
    # '<fingerprint>, loss scale <S>, <N> of <M> steps skipped': the same weights, scale and count
    assert finals['0'] == finals['1'], finals
    scale, skipped, steps = re.fullmatch(r'\w+, loss scale (\S+), (\d+) of (\d+) steps skipped', finals['0']).groups()
    assert 0 < int(skipped) < int(steps) and float(scale) < 1048576.0, finals
    history = json.loads((tmp_path / 'metrics.json').read_text())
    assert sum(r['skipped_steps'] for r in history) == int(skipped)


@needs_msrun
def test_msrun_overflow_decision_is_reduced_over_ranks(tmp_path):
    """On CPU one rank's overflowing gradients reach every rank through the gradient all-reduce, so
    a training run cannot show the decision's own reduction; on Ascend in saturation mode the local
    check reads a per-device flag instead. Here each rank passes its own verdict."""
    logs = _msrun([os.path.join(ROOT, 'tests', 'overflow_flag_worker.py')], str(tmp_path))
    verdicts = re.findall(r'rank (\d)/2 case ([\w ]+): local finite (\w+), all ranks finite (\w+)', logs)
    assert len(verdicts) == 8, logs[-3000:]
    assert ('1', 'only rank 1', 'False', 'False') in verdicts and ('0', 'only rank 1', 'True', 'False') in verdicts
    for rank, case, _, reduced in verdicts:
        assert reduced == str(case == 'none'), (rank, case, reduced)
