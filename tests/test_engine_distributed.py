"""Data parallelism for real: train.py under msrun with 2 CPU workers over 127.0.0.1. With data
parallelism both ranks end with identical weights; without it (data_parallel=false, each rank on
its own shard) they differ, so the first result is not an accident."""
import os
import re
import shutil
import socket
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MSRUN = os.path.join(os.path.dirname(sys.executable), 'msrun')


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _run_msrun(data_dir, out_dir, data_parallel):
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get('PATH', ''),
               PYTHONPATH=ROOT, GLOG_v='3')
    log_dir = os.path.join(out_dir, 'msrun_log')
    os.makedirs(out_dir, exist_ok=True)
    cmd = [MSRUN, '--worker_num=2', '--local_worker_num=2', '--master_addr=127.0.0.1',
           f'--master_port={_free_port()}', f'--log_dir={log_dir}', '--join=True',
           os.path.join(ROOT, 'train.py'), '--arch', 'resnet_mini', '--num_classes', '3', '--image_size', '32',
           '--data_dir', data_dir, '--batch_size', '4', '--epochs', '2', '--warmup_epochs', '0', '--lr', '0.5',
           '--crop_pct', '1.0', '--num_workers', '1', '--eval_interval', '0', '--output_dir', out_dir,
           '--data_parallel', str(data_parallel).lower()]
    proc = subprocess.run(cmd, cwd=out_dir, env=env, capture_output=True, text=True, timeout=600)
    logs = ''
    for name in sorted(os.listdir(log_dir)):
        if name.startswith('worker'):
            with open(os.path.join(log_dir, name)) as f:
                logs += f.read()
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:] + logs[-3000:]
    prints = dict(re.findall(r'rank (\d)/2: final weights fingerprint (\w+)', logs))
    assert sorted(prints) == ['0', '1'], logs[-3000:]
    return prints


@pytest.mark.skipif(not os.path.exists(MSRUN) and shutil.which('msrun') is None, reason='msrun not installed')
def test_msrun_data_parallel_keeps_ranks_in_sync(tiny_imagefolder, tmp_path):
    synced = _run_msrun(tiny_imagefolder, str(tmp_path / 'dp'), True)
    assert synced['0'] == synced['1']
    independent = _run_msrun(tiny_imagefolder, str(tmp_path / 'no_dp'), False)
    assert independent['0'] != independent['1']
    # Only rank 0 writes checkpoints and logs: one log line per epoch end, not two.
    assert sorted(os.listdir(tmp_path / 'dp' / 'checkpoints')) == ['best.ckpt', 'epoch_001.ckpt', 'epoch_002.ckpt']
    log = (tmp_path / 'dp' / 'train.log').read_text()
    assert log.count('epoch 2/2 step') == 1 and '2 device(s)' in log
