"""The launch scripts print one error line and their usage on missing arguments, before any set-up,
and exit with code 2 (bad input); the msrun launchers hand msrun the expected command; run_tests.sh
runs the test files it is given, else the suite; the rank-table launcher takes each rank's ids from
the table, runs it in its own folder, and rejects bad tables (exit code 2; a failed rank is 1)."""
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, assert_bad_input


def _assert_bad_input(proc):
    """The rule for bad input: exit code 2 and exactly one `error: ` line on stderr, its first line."""
    assert_bad_input(proc.returncode, proc.stderr)
    assert proc.stderr.startswith('error: ')


@pytest.mark.parametrize('script, args, missing', [
    ('run_standalone_train.sh', [], 'CONFIG_PATH DATASET_PATH'),
    ('run_distribute_train.sh', ['msrun', 'c.yaml'], 'DATASET_PATH'),
    ('run_distribute_train_gpu.sh', [], 'CONFIG_PATH DATASET_PATH'),
    ('run_eval.sh', ['c.yaml'], 'DATASET_PATH CHECKPOINT_PATH'),
    ('run_distribute_eval.sh', ['c.yaml', 'data'], 'CHECKPOINT_PATH'),
    ('run_export.sh', ['c.yaml'], 'CHECKPOINT_PATH')])
def test_usage_on_missing_arguments(script, args, missing):
    path = os.path.join(ROOT, 'scripts', script)
    proc = subprocess.run(['bash', path, *args], capture_output=True, text=True, timeout=30)
    _assert_bad_input(proc)
    error, usage, *more = proc.stderr.splitlines()
    assert error.startswith(f'error: missing argument(s): {missing} (')
    assert usage.startswith(f'Usage: bash {path} ')
    assert more == (['  e.g. bash ' + path + ' config/acmix_resnet26.yaml /data/imagenet Ascend']
                    if script == 'run_standalone_train.sh' else [])
    assert proc.stdout == ''


def _collected(*args):
    """The test ids run_tests.sh selects with these arguments."""
    proc = subprocess.run(['bash', os.path.join(ROOT, 'scripts', 'run_tests.sh'), '--collect-only', *args],
                          capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHON=sys.executable, ACMIX_TEST_TORCH='0'))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return {line for line in proc.stdout.splitlines() if '::' in line}


@pytest.mark.slow
@pytest.mark.parametrize('args, expected', [(['tests/test_config.py'], {'tests/test_config.py'}),
                                            (['-k', 'error'], None)])
def test_run_tests_runs_the_named_files_or_else_the_suite(args, expected):
    files = {test.split('::')[0] for test in _collected(*args)}
    if expected is None:
        assert len(files) > 3  # -k alone selects from the whole suite
    else:
        assert files == expected


@pytest.mark.slow
def test_run_tests_fast_leaves_out_exactly_the_slow_tests():
    everything, fast = _collected('tests'), _collected('--fast', 'tests')
    slow = everything - fast
    assert fast < everything and slow
    marked = _collected('-m', 'slow', 'tests')
    assert slow == marked
    assert any(test.startswith('tests/test_tools_audit_graph.py::test_every_registered_model') for test in slow)
    assert any(test.startswith('tests/test_layers_acmix.py::') for test in fast)


# Rank-table launch (scripts/run_distribute_train.sh RANK_TABLE_FILE ...): the table is read by
# src/tools/rank_table.py; DRY_RUN=1 prints each rank's command and starts nothing.
PYTHON = os.path.join(ROOT, '.venv', 'bin', 'python')
SCRIPT = os.path.join(ROOT, 'scripts', 'run_distribute_train.sh')
CONFIG = os.path.join(ROOT, 'config', 'demo_cpu.yaml')


def _table(servers, **extra):
    """A rank table in the tutorial's format; servers: {server_id: [(device_id, rank_id), ...]}."""
    table = {'version': '1.0', 'server_count': str(len(servers)), 'server_list': [
        {'server_id': name, 'device': [{'device_id': str(d), 'device_ip': f'192.{d}.0.6', 'rank_id': str(r)}
                                       for d, r in devices], 'host_nic_ip': 'reserve'}
        for name, devices in servers.items()], 'status': 'completed'}
    table.update(extra)
    return table


def _write(tmp_path, table, name='rank_table.json'):
    path = tmp_path / name
    path.write_text(table if isinstance(table, str) else json.dumps(table))
    return str(path)


def _launch(tmp_path, table_path, *args, **env):
    (tmp_path / 'data').mkdir(exist_ok=True)
    env = dict(os.environ, PYTHON=PYTHON, **env)
    return subprocess.run(['bash', SCRIPT, table_path, CONFIG, str(tmp_path / 'data'), *args],
                          capture_output=True, text=True, timeout=120, env=env, cwd=str(tmp_path))


def _rank_table_tool(*args, **env):
    return subprocess.run([PYTHON, '-m', 'src.tools.rank_table', *args], capture_output=True, text=True,
                          timeout=60, cwd=ROOT, env=dict(os.environ, **env))


def test_rank_table_dry_run_takes_ids_from_the_table(tmp_path):
    # devices 4-7 carry ranks 0-3, listed out of order
    path = _write(tmp_path, _table({'10.0.0.1': [(7, 3), (5, 1), (4, 0), (6, 2)]}))
    proc = _launch(tmp_path, path, '4', '--output_dir', 'outputs/rel', '--epochs', '1', DRY_RUN='1')
    assert proc.returncode == 0, proc.stderr
    server, *lines = proc.stdout.splitlines()
    assert server == 'server 10.0.0.1: ranks 0-3 on devices 4, 5, 6, 7 (this server)'
    assert lines[-1] == 'dry run: nothing started'
    heads, cmds = lines[0:-1:2], lines[1:-1:2]
    assert len(heads) == len(cmds) == 4
    run_dir = os.path.join(ROOT, 'outputs', 'rel')  # relative output_dir: from the project root
    for rank, (head, cmd) in enumerate(zip(heads, cmds)):
        rank_dir = os.path.join(run_dir, f'rank_{rank}')
        assert head == (f'rank {rank}: device {rank + 4}, working directory {rank_dir}, '
                        f'log {rank_dir}/train.log')
        words = shlex.split(cmd)
        assert words[:3] == ['cd', rank_dir, '&&']
        assert words[3] == 'env'
        env = dict(w.split('=', 1) for w in words[4:9])
        assert env == {'RANK_TABLE_FILE': path, 'RANK_SIZE': '4', 'RANK_ID': str(rank),
                       'DEVICE_ID': str(rank + 4), 'ACMIX_CWD': ROOT}
        assert words[9:11] == [PYTHON, os.path.join(ROOT, 'train.py')]
        assert words[11:] == ['--config', CONFIG, '--data_dir', str(tmp_path / 'data'), '--device_target',
                              'Ascend', '--output_dir', 'outputs/rel', '--epochs', '1', '>',
                              f'{rank_dir}/train.log', '2>&1']
    assert not os.path.exists(run_dir)  # nothing created


def test_rank_table_device_count_must_match_device_num(tmp_path):
    path = _write(tmp_path, _table({'node_0': [(4, 0), (5, 1), (6, 2), (7, 3)]}))
    proc = _launch(tmp_path, path, DRY_RUN='1')  # DEVICE_NUM defaults to 8
    _assert_bad_input(proc)
    assert proc.stderr.strip() == ('error: the rank table lists 4 device(s) for server node_0, but DEVICE_NUM is 8: '
                                   'pass DEVICE_NUM 4 or use another table')
    assert proc.stdout == ''


def test_malformed_rank_table_is_a_one_line_error(tmp_path):
    path = _write(tmp_path, '{"server_list": [')
    proc = _launch(tmp_path, path, '2', DRY_RUN='1')
    _assert_bad_input(proc)
    assert proc.stderr.startswith(f'error: rank table {path} is not valid JSON: ')
    assert len(proc.stderr.strip().splitlines()) == 1 and proc.stdout == ''


def test_missing_rank_table_file_via_the_launcher(tmp_path):
    proc = _launch(tmp_path, str(tmp_path / 'none.json'), '1', DRY_RUN='1')
    _assert_bad_input(proc)
    assert proc.stderr.strip() == f'error: rank table file not found: {tmp_path}/none.json'
    assert proc.stdout == ''


def test_rank_table_launch_runs_each_rank_in_its_folder(tmp_path):
    """Not a dry run: one rank really starts (here it fails, no Ascend); its log is in its folder and the
    launcher's exit status and message say so."""
    path = _write(tmp_path, _table({'node_0': [(3, 0)]}))
    proc = _launch(tmp_path, path, '1', '--output_dir', str(tmp_path / 'out'))
    log = tmp_path / 'out' / 'rank_0' / 'train.log'
    assert proc.returncode == 1
    assert f'rank 0 on device 3: log {log}' in proc.stdout
    assert proc.stderr.strip().endswith(f'error: a rank failed, see {log}')
    assert log.read_text().strip()  # the rank's own output (its error) is in its log


BAD_TABLES = [
    ({'version': '1.0'}, 'rank table has no server_list'),
    (_table({'n0': [(0, 0), (0, 1)]}), 'server n0 lists device_id 0 twice'),
    (_table({'n0': [(0, 0), (1, 0)]}), 'rank_id 0 appears twice (servers n0 and n0)'),
    (_table({'n0': [(0, 1), (1, 2)]}), 'rank ids must be 0..1, each once; the table has 1, 2'),
    ({'server_list': [{'server_id': 'n0', 'device': [{'device_id': '0'}]}]}, 'server n0 device[0] has no rank_id'),
    ({'server_list': [{'device': [{'device_id': '0', 'rank_id': '0'}]}]}, 'server_list[0] has no server_id'),
    ({'server_list': [{'server_id': 'n0', 'device': [{'device_id': 'x', 'rank_id': '0'}]}]},
     "server n0 device[0] device_id must be a non-negative integer, got 'x'"),
    (_table({'n0': [(0, 0), (1, 1)], 'n1': [(0, 1), (1, 2)]}), 'rank_id 1 appears twice (servers n0 and n1)'),
    # ranks server by server in server_list order, each server a block of consecutive ids
    (_table({'n0': [(0, 2), (1, 3)], 'n1': [(0, 0), (1, 1)]}), 'server n0 has rank ids 2, 3, expected 0-1: rank ids'),
    (_table({'n0': [(0, 0), (1, 2)], 'n1': [(0, 1), (1, 3)]}), 'server n0 has rank ids 0, 2, expected 0-1'),
    (_table({'n0': [(0, 0)]}, status='initializing'), "rank table status is 'initializing', not 'completed'"),
    (_table({'n0': [(0, 0)]}, server_count='2'), "rank table server_count is '2' but server_list lists 1 server(s)"),
    ('[1, 2]', 'expected a JSON object with a server_list'),
]


@pytest.mark.parametrize('table,message', BAD_TABLES)
def test_rank_table_errors(tmp_path, table, message):
    proc = _rank_table_tool(_write(tmp_path, table), '1')
    _assert_bad_input(proc)
    assert proc.stdout == '' and message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_rank_table_missing_file(tmp_path):
    proc = _rank_table_tool(str(tmp_path / 'none.json'), '1')
    _assert_bad_input(proc)
    assert proc.stderr.strip() == f'error: rank table file not found: {tmp_path}/none.json'


def test_rank_table_several_servers_need_server_id(tmp_path):
    path = _write(tmp_path, _table({'node_0': [(0, 0), (1, 1)], 'node_1': [(0, 2), (1, 3)]}))
    proc = _rank_table_tool(path, '2', SERVER_ID='')
    _assert_bad_input(proc)
    assert proc.stderr.strip() == ("error: the rank table lists 2 servers (node_0, node_1): set SERVER_ID to this "
                                   "machine's server_id")
    proc = _rank_table_tool(path, '2', SERVER_ID='node_1')
    assert proc.returncode == 0 and proc.stdout.splitlines() == ['2 0 4', '3 1 4']  # RANK_ID DEVICE_ID RANK_SIZE
    proc = _rank_table_tool(path, '2', SERVER_ID='node_9')
    _assert_bad_input(proc)
    assert 'SERVER_ID node_9 is not in the rank table (servers: node_0, node_1)' in proc.stderr


def test_two_server_rank_table_dry_run_on_each_server(tmp_path):
    """Each server's launcher runs that server's ranks, on the devices the table gives them, in a job of
    all the table's ranks; a server whose device count is not DEVICE_NUM is one error line."""
    path = _write(tmp_path, _table({'node_0': [(0, 0), (1, 1)], 'node_1': [(4, 2), (5, 3)]}))
    servers = ['server node_0: ranks 0-1 on devices 0, 1', 'server node_1: ranks 2-3 on devices 4, 5']
    for this, devices in (('node_0', {0: 0, 1: 1}), ('node_1', {2: 4, 3: 5})):
        proc = _launch(tmp_path, path, '2', DRY_RUN='1', SERVER_ID=this)
        assert proc.returncode == 0, proc.stderr
        lines = proc.stdout.splitlines()
        assert lines[:2] == [line + (' (this server)' if line.split()[1] == f'{this}:' else '') for line in servers]
        envs = [dict(w.split('=', 1) for w in shlex.split(cmd)[4:9]) for cmd in lines[3:-1:2]]
        assert {int(e['RANK_ID']): int(e['DEVICE_ID']) for e in envs} == devices
        assert {e['RANK_SIZE'] for e in envs} == {'4'}
    proc = _launch(tmp_path, path, '1', DRY_RUN='1', SERVER_ID='node_1')
    _assert_bad_input(proc)
    assert proc.stderr.strip() == ('error: the rank table lists 2 device(s) for server node_1, but DEVICE_NUM is 1: '
                                   'pass DEVICE_NUM 2 or use another table') and proc.stdout == ''


@pytest.mark.slow
def test_sigterm_to_the_rank_table_launcher_stops_its_rank_with_a_checkpoint(tiny_imagefolder, tmp_path):
    """The launcher passes a SIGTERM on to its ranks (as SIGUSR1): the rank stops after its step with a
    checkpoint and the launcher exits 0. On CPU: a one-device table (no collective) and
    --device_target CPU after the launcher's own Ascend."""
    path = _write(tmp_path, _table({'node_0': [(0, 0)]}))
    out = tmp_path / 'out'
    env = dict(os.environ, PYTHON=PYTHON, GLOG_v='3')
    proc = subprocess.Popen(['bash', SCRIPT, path, CONFIG, tiny_imagefolder, '1', '--device_target', 'CPU',
                             '--arch', 'resnet_mini', '--num_classes', '3', '--image_size', '32', '--batch_size', '2',
                             '--num_workers', '1', '--epochs', '50', '--eval_interval', '0', '--log_interval', '1',
                             '--output_dir', str(out)],
                            cwd=str(tmp_path), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = out / 'rank_0' / 'train.log'
    try:
        deadline = time.time() + 240
        while time.time() < deadline and 'epoch 1/50 step 2/' not in (log.read_text() if log.exists() else ''):
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr + log.read_text()[-2000:]
    assert 'asking the ranks to stop (SIGUSR1)' in stderr
    stopped = re.search(r'stopped by the launcher \(SIGUSR1\) at epoch \d+, step \d+ of \d+; checkpoint (\S+?)\. ',
                        log.read_text())
    assert stopped and os.path.isfile(stopped.group(1)), log.read_text()[-2000:]


def test_rank_table_tool_does_not_import_mindspore(tmp_path):
    path = _write(tmp_path, _table({'n0': [(4, 0)]}))
    code = ('import sys; from src.tools import rank_table; rank_table.main([sys.argv[1], "1"]); '
            'print("mindspore" in sys.modules)')
    proc = subprocess.run([PYTHON, '-c', code, path], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.stdout.splitlines() == ['0 4 1', 'False']


# msrun launchers: a fake `msrun` stands first on PATH. The launchers put the folder of the Python
# they use first on PATH (msrun's workers start the bare `python`), so PYTHON names a wrapper of the
# project's interpreter in the fake's folder; the fake prints its working directory and argv, one a
# line, and exits 7, which the launcher must return.
def _fake_msrun(tmp_path, script, *args, **extra_env):
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    (bin_dir / 'python').write_text(f'#!/bin/sh\nexec {shlex.quote(PYTHON)} "$@"\n')
    (bin_dir / 'msrun').write_text('#!/bin/sh\npwd\nprintf "%s\\n" "$@"\nexit 7\n')
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    (tmp_path / 'data').mkdir()
    env = {k: v for k, v in os.environ.items()
           if k not in ('DEVICE_TARGET', 'MASTER_PORT', 'MASTER_ADDR', 'NODE_NUM', 'NODE_RANK', 'DRY_RUN', 'LOG_DIR')}
    env.update(PYTHON=str(bin_dir / 'python'), **extra_env)
    return subprocess.run(['bash', os.path.join(ROOT, 'scripts', script), *args], capture_output=True, text=True,
                          timeout=120, env=env, cwd=str(tmp_path))


@pytest.mark.parametrize('script, args, env, device_num, port, target', [
    ('run_distribute_train.sh', ['msrun', CONFIG, 'data', '2'], {'MASTER_PORT': '8230'}, '2', '8230', 'Ascend'),
    ('run_distribute_train_gpu.sh', [CONFIG, 'data'], {}, '8', '8118', 'GPU'),
    ('run_distribute_train_gpu.sh', [CONFIG, 'data', '2'], {'DEVICE_TARGET': 'CPU'}, '2', '8118', 'CPU')])
def test_msrun_launchers_build_the_msrun_command(tmp_path, script, args, env, device_num, port, target):
    out = tmp_path / 'out'
    proc = _fake_msrun(tmp_path, script, *args, '--output_dir', str(out), '--epochs', '1', **env)
    assert proc.returncode == 7, proc.stderr
    cwd, *argv = proc.stdout.splitlines()
    assert cwd == ROOT
    assert argv == [f'--worker_num={device_num}', f'--local_worker_num={device_num}', '--master_addr=127.0.0.1',
                    f'--master_port={port}', f'--log_dir={out}/msrun_log', '--join=True', 'train.py',
                    '--config', CONFIG, '--data_dir', str(tmp_path / 'data'), '--device_target', target,
                    '--output_dir', str(out), '--epochs', '1']
    assert not out.exists()  # nothing started


def test_distributed_evaluation_builds_the_msrun_command(tmp_path):
    (tmp_path / 'best.ckpt').write_bytes(b'')
    proc = _fake_msrun(tmp_path, 'run_distribute_eval.sh', CONFIG, 'data', 'best.ckpt', '4', '--eval_batch_size', '8',
                       LOG_DIR='logs')
    assert proc.returncode == 7, proc.stderr
    cwd, *argv = proc.stdout.splitlines()
    assert cwd == ROOT
    assert argv == ['--worker_num=4', '--local_worker_num=4', '--master_addr=127.0.0.1', '--master_port=8118',
                    f'--log_dir={tmp_path}/logs', '--join=True', 'eval.py', '--config', CONFIG, '--data_dir',
                    str(tmp_path / 'data'), '--checkpoint', str(tmp_path / 'best.ckpt'), '--device_target', 'Ascend',
                    '--eval_batch_size', '8']


@pytest.mark.parametrize('script, args', [('run_distribute_train.sh', ['msrun', CONFIG, 'data', '2']),
                                           ('run_distribute_train_gpu.sh', [CONFIG, 'data', '2'])])
def test_msrun_launchers_build_the_command_of_each_node(tmp_path, script, args):
    """Two nodes of two devices: each node's launcher runs msrun with the job's 4 workers, its own 2, the
    master's address and its node rank; DRY_RUN=1 prints that command and starts nothing."""
    out = tmp_path / 'out'
    nodes = dict(NODE_NUM='2', NODE_RANK='1', MASTER_ADDR='10.1.2.3', MASTER_PORT='8231')
    proc = _fake_msrun(tmp_path, script, *args, '--output_dir', str(out), **nodes)
    assert proc.returncode == 7, proc.stderr
    msrun = ['--worker_num=4', '--local_worker_num=2', '--master_addr=10.1.2.3', '--master_port=8231',
             '--node_rank=1', f'--log_dir={out}/msrun_log', '--join=True', 'train.py']
    assert proc.stdout.splitlines()[1:len(msrun) + 1] == msrun
    (tmp_path / 'dry').mkdir()
    dry = _fake_msrun(tmp_path / 'dry', script, *args, '--output_dir', str(out), DRY_RUN='1', **nodes)
    assert dry.returncode == 0, dry.stderr
    printed, done = dry.stdout.splitlines()
    assert printed.startswith('node 1 of 2: msrun ' + ' '.join(msrun)) and done == 'dry run: nothing started'
    assert not out.exists()


@pytest.mark.parametrize('env, message', [
    (dict(NODE_NUM='2', NODE_RANK='2', MASTER_ADDR='10.1.2.3'),
     "NODE_RANK must be this node's rank, 0..1 for NODE_NUM=2, got '2'"),
    (dict(NODE_NUM='2', NODE_RANK='0'), 'NODE_NUM=2 needs MASTER_ADDR, the address of node 0 (the same on every node)'),
    (dict(NODE_NUM='two'), "NODE_NUM must be a positive integer (the nodes in the job), got 'two'"),
    (dict(MASTER_PORT='http'), "MASTER_PORT must be a port number, got 'http'")])
def test_msrun_node_settings_that_do_not_fit_are_one_error_line(tmp_path, env, message):
    proc = _fake_msrun(tmp_path, 'run_distribute_train_gpu.sh', CONFIG, 'data', '2', **env)
    _assert_bad_input(proc)
    assert proc.stderr.strip() == f'error: {message}' and proc.stdout == ''  # msrun never ran
