"""Data parallelism for real: train.py under msrun with 2 CPU workers over 127.0.0.1. With data
parallelism both ranks end with identical weights; without it (data_parallel=false, each rank on
its own shard) they differ, so the first result is not an accident. Under loss scaling both ranks
skip the same steps, and the overflow decision they share is the reduction of their local ones."""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MSRUN = os.path.join(os.path.dirname(sys.executable), 'msrun')
needs_msrun = pytest.mark.skipif(not os.path.exists(MSRUN) and shutil.which('msrun') is None,
                                 reason='msrun not installed')
# msrun starts two training workers and a scheduler: each test holds both CPUs under pytest-xdist
pytestmark = [pytest.mark.all_cpus, pytest.mark.slow]


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _msrun_command(script_and_args, out_dir):
    """(command, environment) that run a script on 2 msrun workers, logs in out_dir/msrun_log."""
    # MS_RETRY_INTERVAL_LOWER/UPPER (MindSpore's dynamic-cluster variables, 3 and 5 s by default): how
    # long a node waits before it retries a message to the scheduler; on localhost the cluster forms
    # and winds down sooner with 1 s.
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get('PATH', ''),
               PYTHONPATH=ROOT, GLOG_v='3', MS_RETRY_INTERVAL_LOWER='1', MS_RETRY_INTERVAL_UPPER='1')
    os.makedirs(out_dir, exist_ok=True)
    cmd = [MSRUN, '--worker_num=2', '--local_worker_num=2', '--master_addr=127.0.0.1',
           f'--master_port={_free_port()}', f'--log_dir={os.path.join(out_dir, "msrun_log")}', '--join=True']
    return cmd + list(script_and_args), env


def _worker_logs(out_dir):
    """{rank: its log} (empty until msrun has created its log folder)."""
    log_dir = os.path.join(out_dir, 'msrun_log')
    logs = {}
    for name in sorted(os.listdir(log_dir) if os.path.isdir(log_dir) else []):
        m = re.fullmatch(r'worker_(\d+)\.log', name)
        if m:
            with open(os.path.join(log_dir, name)) as f:
                logs[int(m.group(1))] = f.read()
    return logs


def _msrun(script_and_args, out_dir):
    """Run a script on 2 msrun workers in out_dir; returns the workers' logs, concatenated."""
    cmd, env = _msrun_command(script_and_args, out_dir)
    proc = subprocess.run(cmd, cwd=out_dir, env=env, capture_output=True, text=True, timeout=600)
    logs = ''.join(_worker_logs(out_dir).values())
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:] + logs[-3000:]
    return logs


def _train_args(data_dir, out_dir, data_parallel, *extra_args):
    return [os.path.join(ROOT, 'train.py'), '--arch', 'resnet_mini', '--num_classes', '3', '--image_size', '32',
            '--data_dir', data_dir, '--batch_size', '4', '--epochs', '2', '--warmup_epochs', '0', '--lr', '0.5',
            '--crop_pct', '1.0', '--num_workers', '1', '--eval_interval', '0', '--output_dir', out_dir,
            '--data_parallel', str(data_parallel).lower(), *extra_args]


def _run_msrun(data_dir, out_dir, data_parallel, *extra_args):
    """train.py on 2 workers; returns {rank: what its final line says after the weights fingerprint}."""
    logs = _msrun(_train_args(data_dir, out_dir, data_parallel, *extra_args), out_dir)
    prints = dict(re.findall(r'rank (\d)/2: final weights fingerprint (.+)', logs))
    assert sorted(prints) == ['0', '1'], logs[-3000:]
    return prints


@needs_msrun
def test_msrun_data_parallel_keeps_ranks_in_sync_and_skips_the_same_steps(tiny_imagefolder, tmp_path):
    # fp16 (O2) from a scale its gradients overflow at: the first updates are skipped, the later applied.
    args = ('--amp_level', 'O2', '--loss_scale', '1048576.0')
    synced = _run_msrun(tiny_imagefolder, str(tmp_path / 'dp'), True, *args)
    # '<fingerprint>, loss scale <S>, <N> of <M> steps skipped': the same weights, scale and count
    assert synced['0'] == synced['1'], synced
    scale, skipped, steps = re.fullmatch(r'\w+, loss scale (\S+), (\d+) of (\d+) steps skipped', synced['0']).groups()
    assert 0 < int(skipped) < int(steps) and float(scale) < 1048576.0, synced
    history = json.loads((tmp_path / 'dp' / 'metrics.json').read_text())
    assert sum(r['skipped_steps'] for r in history) == int(skipped)
    # Only rank 0 writes checkpoints and logs: one log line per epoch end, not two.
    assert sorted(os.listdir(tmp_path / 'dp' / 'checkpoints')) == ['best.ckpt', 'epoch_001.ckpt', 'epoch_002.ckpt']
    log = (tmp_path / 'dp' / 'train.log').read_text()
    assert log.count('epoch 2/2 step') == 1 and '2 device(s)' in log
    # Without the gradient all-reduce the ranks drift apart: the check above can fail.
    independent = _run_msrun(tiny_imagefolder, str(tmp_path / 'no_dp'), False, *args)
    assert independent['0'].split(',')[0] != independent['1'].split(',')[0], independent


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


def _msrun_workers(msrun_pid):
    """PIDs of msrun's training workers (not its scheduler process, which runs the same script)."""
    pids = []
    for entry in os.listdir('/proc'):
        if not entry.isdigit():
            continue
        try:
            with open(f'/proc/{entry}/stat') as f:
                parent = int(f.read().rsplit(')', 1)[1].split()[1])
            with open(f'/proc/{entry}/environ', 'rb') as f:
                environ = f.read().split(b'\0')
            with open(f'/proc/{entry}/cmdline', 'rb') as f:
                command = f.read().split(b'\0')
        except OSError:
            continue
        # msrun's `tail -f` of each worker log inherits MS_ROLE too.
        if parent == msrun_pid and b'MS_ROLE=MS_WORKER' in environ and any(b'train.py' in a for a in command):
            pids.append(int(entry))
    return pids


@needs_msrun
def test_msrun_sigterm_stops_every_rank_at_one_step_with_a_checkpoint_that_resumes(tiny_imagefolder, tmp_path):
    # A scheduler (Slurm's scancel, a node drain) signals every process of the job. msrun 2.10 itself
    # dies on SIGTERM without passing it on, so the ranks are signalled directly, as the scheduler does.
    out = str(tmp_path)
    cmd, env = _msrun_command(_train_args(tiny_imagefolder, out, True, '--epochs', '40', '--log_interval', '2'), out)
    proc = subprocess.Popen(cmd, cwd=out, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and 'epoch 2/40 step' not in _worker_logs(out).get(0, ''):
            assert proc.poll() is None, _worker_logs(out)
            time.sleep(0.05)
        workers = _msrun_workers(proc.pid)
        assert len(workers) == 2, workers
        for pid in workers:
            os.kill(pid, signal.SIGTERM)
        signalled = time.time()
        code = proc.wait(timeout=60)
        assert time.time() - signalled < 60
    finally:
        if proc.poll() is None:
            proc.kill()
    logs = _worker_logs(out)
    assert code == 0, logs
    rank0 = re.search(r'stopped by SIGTERM at (.+?); checkpoint (\S+)\. Run the same command', logs[0])
    rank1 = re.search(r'rank 1 stopped by (?:SIGTERM|a stop request on another rank) at (.+)', logs[1])
    assert rank0 and rank1, logs
    assert rank0.group(1) == rank1.group(1).strip()  # the same step on both ranks
    checkpoint = rank0.group(2)
    assert os.path.isfile(checkpoint)
    stopped_epoch = int(re.search(r'epoch (\d+)', rank0.group(1)).group(1))
    os.rename(os.path.join(out, 'msrun_log'), os.path.join(out, 'msrun_log_stopped'))

    # It resumes, on both ranks, and they end with the same weights.
    resumed = _msrun(_train_args(tiny_imagefolder, out, True, '--epochs', str(stopped_epoch + 1),
                                 '--resume', 'auto'), out)
    assert f'resumed from {checkpoint}' in resumed
    prints = dict(re.findall(r'rank (\d)/2: final weights fingerprint (.+)', resumed))
    assert sorted(prints) == ['0', '1'] and prints['0'] == prints['1'], resumed[-3000:]


@pytest.fixture(scope='module')
def eleven_images_evaluated_alone(tiny_imagefolder, tmp_path_factory):
    """(eval.py arguments, its JSON line in one process) for an untrained resnet_mini on 11 images: 11
    over 2 ranks with batch 4 are shards of 6 (4 + 2) and 5 (4 + 1), so the ranks run their last,
    partial batches at different sizes. An untrained model: its top-1 is neither 0 nor 1, so a wrong
    shard would show in it. Module-scoped, so that it runs before the test takes the CPUs alone."""
    import mindspore as ms

    from conftest import tiny_config
    from src.models import build_model
    tmp_path = tmp_path_factory.mktemp('eleven_images')
    data = tmp_path / 'data'
    shutil.copytree(tiny_imagefolder, data)
    os.remove(data / 'val' / 'class_1' / '0.png')
    checkpoint = str(tmp_path / 'untrained.ckpt')
    ms.set_seed(1)
    ms.save_checkpoint(build_model(tiny_config(str(data), tmp_path)), checkpoint)
    args = [os.path.join(ROOT, 'eval.py'), '--arch', 'resnet_mini', '--num_classes', '3', '--image_size', '32',
            '--crop_pct', '1.0', '--num_workers', '1', '--eval_batch_size', '4', '--data_dir', str(data),
            '--checkpoint', checkpoint]
    single = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, PYTHONPATH=ROOT, GLOG_v='3'))
    assert single.returncode == 0, single.stderr[-2000:]
    return args, json.loads(single.stdout.strip().splitlines()[-1])


@needs_msrun
def test_msrun_validation_counts_every_image_once(eleven_images_evaluated_alone, tmp_path):
    args, alone = eleven_images_evaluated_alone
    logs = _msrun(args, str(tmp_path / 'msrun'))
    printed = [json.loads(line) for line in logs.splitlines() if line.startswith('{"checkpoint"')]
    assert len(printed) == 1, logs[-3000:]  # rank 0 only
    split = printed[0]
    assert (alone['count'], alone['ranks'], split['ranks']) == (11, 1, 2)
    assert [split[k] for k in ('count', 'top1', 'top5')] == [alone[k] for k in ('count', 'top1', 'top5')]
    assert split['loss'] == pytest.approx(alone['loss'], rel=1e-6)
    assert 0 < alone['top1'] < 1
    print(f"single process and 2 ranks: top-1 {alone['top1']:.4f}, top-5 {alone['top5']:.4f}, 11 images")
