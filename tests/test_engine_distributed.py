"""Data parallelism for real: train.py under msrun with 2 CPU workers over 127.0.0.1. With data
parallelism both ranks end with identical weights; without it (data_parallel=false, each rank on
its own shard) they differ, so the first result is not an accident. Under loss scaling both ranks
skip the same steps, and the overflow decision they share is the reduction of their local ones.
Two "servers" on this machine (the launchers with NODE_NUM=2, separate output folders) train as one
server of two workers, stop on SIGTERM and resume from their own folders, and evaluate as one process."""
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


# ----------------------------------------------------------------------------- several nodes
# Two "nodes" on this machine: two launcher invocations (scripts/run_distribute_*.sh) with NODE_NUM=2,
# NODE_RANK 0 and 1 and one worker each, every node with its own output folder (nothing shared, as
# on servers without a shared filesystem). The launchers are the ones users run, with
# DEVICE_TARGET=CPU. msrun starts the job's scheduler on the node whose own address MASTER_ADDR is:
# here that would be both nodes, and the second scheduler could not bind the port. So MASTER_ADDR is
# 127.0.0.2 (reachable, but not an address of an interface: no msrun starts a scheduler) and the
# test starts the scheduler msrun would have started on the master, listening there.
TRAIN_OVERRIDES = ['--arch', 'resnet_mini', '--num_classes', '3', '--image_size', '32', '--batch_size', '4',
                   '--epochs', '2', '--warmup_epochs', '1', '--crop_pct', '1.0', '--num_workers', '1',
                   '--eval_interval', '0', '--log_interval', '2', '--keep_checkpoint_max', '2']


def _launcher_env(**extra):
    return dict(os.environ, PYTHON=sys.executable, DEVICE_TARGET='CPU', GLOG_v='3', MS_RETRY_INTERVAL_LOWER='1',
                MS_RETRY_INTERVAL_UPPER='1', **extra)


def _launch(script, args, node_env, log):
    """Starts scripts/<script> ARGS... as one node; its output goes to the file `log`."""
    with open(log, 'w') as out:
        return subprocess.Popen(['bash', os.path.join(ROOT, 'scripts', script), *args], cwd=ROOT,
                                env=_launcher_env(**node_env), stdout=out, stderr=subprocess.STDOUT)


MASTER_ADDR = '127.0.0.2'


def _nodes(script, args_of_node, tmp_path, name, extra_env_of_node=lambda i: {}):
    """Starts the job's scheduler and two nodes of one worker each (node i: script args_of_node(i));
    returns the processes, the scheduler last."""
    port = str(_free_port())
    with open(tmp_path / f'{name}_scheduler.log', 'w') as log:
        scheduler = subprocess.Popen(
            [sys.executable, '-c', 'from mindspore.communication import init; init()'], cwd=ROOT, stdout=log,
            stderr=subprocess.STDOUT, env=_launcher_env(MS_ROLE='MS_SCHED', MS_SCHED_HOST=MASTER_ADDR,
                                                        MS_SCHED_PORT=port, MS_WORKER_NUM='2', RANK_ID='0'))
    nodes = [_launch(script, args_of_node(i), dict(NODE_NUM='2', NODE_RANK=str(i), MASTER_ADDR=MASTER_ADDR,
                                                   MASTER_PORT=port, **extra_env_of_node(i)),
                     tmp_path / f'{name}_node{i}.log')
             for i in range(2)]
    return nodes + [scheduler]


def _finish(procs, what, logs_of):
    try:
        codes = [p.wait(timeout=600) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert codes == [0] * len(procs), f'{what}: exit codes {codes}\n' + logs_of()[-4000:]


def _train_nodes(data, tmp_path, name, outs, *extra):
    """Two nodes train, node i into the folder outs[i]."""
    procs = _nodes('run_distribute_train_gpu.sh', lambda i: [os.path.join(ROOT, 'config', 'demo_cpu.yaml'), data, '1',
                                                             *TRAIN_OVERRIDES, '--output_dir', str(outs[i]), *extra],
                   tmp_path, name)
    _finish(procs, name, lambda: ''.join(''.join(_worker_logs(str(o)).values()) for o in outs))


def _fingerprints(*out_dirs):
    logs = ''.join(''.join(_worker_logs(str(o)).values()) for o in out_dirs)
    return dict(re.findall(r'rank (\d)/2: final weights fingerprint (\w+)', logs))


def _train_losses(out_dir):
    return [(r['epoch'], r['train_loss'], r['lr']) for r in json.loads((out_dir / 'metrics.json').read_text())]


@pytest.fixture(scope='module')
def images_for_many_steps(tmp_path_factory):
    """120 training images: 15 steps an epoch at 2 ranks x batch 4, so that a stop lands inside an epoch."""
    from conftest import write_tiny_imagefolder
    return write_tiny_imagefolder(str(tmp_path_factory.mktemp('many_steps')), train_per_class=40)


@needs_msrun
def test_two_nodes_train_as_one_node_of_two_and_resume_from_their_own_folders(images_for_many_steps, tmp_path):
    data = images_for_many_steps
    # One node of two workers, the reference.
    one = tmp_path / 'one_node'
    proc = _launch('run_distribute_train_gpu.sh', [os.path.join(ROOT, 'config', 'demo_cpu.yaml'), data, '2',
                                                   *TRAIN_OVERRIDES, '--output_dir', str(one)], {},
                   tmp_path / 'one_node.log')
    _finish([proc], 'one node', lambda: ''.join(_worker_logs(str(one)).values()))
    reference = _fingerprints(one)
    assert sorted(reference) == ['0', '1'] and reference['0'] == reference['1'], reference

    # Two nodes, nothing shared, each its own output folder. SIGTERM to both launchers inside the run:
    # each node's rank stops at the same step with a checkpoint in its own folder; relaunched with
    # --resume auto, both ranks end with the one-node weights and node 0's losses are the one node's.
    # (An uninterrupted two-node run would add nothing: the resumed one is compared with the one node.)
    stopped = [tmp_path / 'stopped' / f'node{i}' for i in range(2)]
    procs = _nodes('run_distribute_train_gpu.sh', lambda i: [os.path.join(ROOT, 'config', 'demo_cpu.yaml'), data, '1',
                                                             *TRAIN_OVERRIDES, '--output_dir', str(stopped[i])],
                   tmp_path, 'stopped')
    try:
        deadline = time.time() + 300
        while time.time() < deadline and 'epoch 1/2 step 4/15' not in _worker_logs(str(stopped[0])).get(0, ''):
            assert all(p.poll() is None for p in procs), _worker_logs(str(stopped[0]))
            time.sleep(0.05)
        # Node 1's launcher alone is signalled (as Kubernetes signals a container's first process); on
        # node 0 the launcher and the training process both (as Slurm signals every process of a job):
        # the launcher's SIGUSR1 must not count as a second signal there.
        from src.tools.msrun_workers import msrun_workers
        workers = [msrun_workers(p.pid, 'train.py') for p in procs[:2]]
        assert [len(w) for w in workers] == [1, 1], workers
        node0_workers = workers[0]
        for p in procs[:2]:
            p.send_signal(signal.SIGTERM)
        os.kill(node0_workers[0], signal.SIGTERM)
    finally:
        _finish(procs, 'stopped', lambda: ''.join(''.join(_worker_logs(str(o)).values()) for o in stopped))
    logs = [_worker_logs(str(out))[i] for i, out in enumerate(stopped)]
    # (a rank whose signal comes after the step where its peer's request is reduced stops for the peer)
    where = [re.search(r'stopped by (?:SIGTERM|the launcher \(SIGUSR1\)|a stop request on another rank) at '
                       r'(epoch \d, step \d+ of 15); checkpoint (\S+?)\.?\s', log) for log in logs]
    assert all(where), logs
    assert where[0].group(1) == where[1].group(1)  # the same step on both nodes
    for i, out in enumerate(stopped):
        assert os.path.dirname(where[i].group(2)) == str(out / 'checkpoints')
    for i, worker in enumerate(workers):  # each launcher passed the stop on to its worker
        assert f'asked the workers to stop (SIGUSR1): {worker[0]} ' in (tmp_path / f'stopped_node{i}.log').read_text()
    for out in stopped:
        os.rename(out / 'msrun_log', out / 'msrun_log_stopped')
    _train_nodes(data, tmp_path, 'resumed', stopped, '--resume', 'auto')
    assert _fingerprints(*stopped) == reference
    for out in stopped:
        assert sorted(os.listdir(out / 'checkpoints')) == ['best.ckpt', 'epoch_001.ckpt', 'epoch_002.ckpt'], out
    assert _train_losses(stopped[0]) == _train_losses(one)
    # node 1's metrics are its own shard's: the same epochs and learning rates, other losses
    node0, node1 = (_train_losses(out) for out in stopped)
    assert [(e, lr) for e, _, lr in node1] == [(e, lr) for e, _, lr in node0]
    assert all(a != b for (_, a, _), (_, b, _) in zip(node0, node1)), (node0, node1)
    assert 'ranks 0, 1 write checkpoints' in (stopped[0] / 'train.log').read_text()
    assert not (stopped[1] / 'train.log').exists() and (stopped[1] / 'config.yaml').exists()  # the log is rank 0's


@needs_msrun
def test_two_node_evaluation_counts_every_image_once(eleven_images_evaluated_alone, tmp_path):
    args, alone = eleven_images_evaluated_alone
    options = dict(zip(args[1::2], args[2::2]))
    logs = [tmp_path / f'node{i}_log' for i in range(2)]
    procs = _nodes('run_distribute_eval.sh', lambda i: [os.path.join(ROOT, 'config', 'demo_cpu.yaml'),
                                                        options['--data_dir'], options['--checkpoint'], '1', *args[1:]],
                   tmp_path, 'eval', lambda i: dict(LOG_DIR=str(logs[i])))

    def read_logs():
        found = [p / f'worker_{i}.log' for i, p in enumerate(logs)]
        return ''.join(log.read_text() for log in found if log.exists())
    _finish(procs, 'two-node evaluation', read_logs)
    printed = [json.loads(line) for line in read_logs().splitlines() if line.startswith('{"checkpoint"')]
    assert len(printed) == 1 and printed[0]['ranks'] == 2, read_logs()[-3000:]  # rank 0 only
    assert [printed[0][k] for k in ('count', 'top1', 'top5')] == [alone[k] for k in ('count', 'top1', 'top5')]
    assert printed[0]['loss'] == pytest.approx(alone['loss'], rel=1e-6)
