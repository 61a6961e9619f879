"""Pass a signal on to the workers msrun started: msrun 2.10 does not (on SIGTERM it exits at once and
leaves its workers running), so the msrun launchers (scripts/env.sh, acmix_msrun) pass the
SIGTERM/SIGINT they get on with this, as SIGUSR1 (a stop request, src/engine/preemption.py), and a
second one as SIGKILL.

    python -m src.tools.msrun_workers PID SCRIPT [--signal USR1]

Finds the processes below PID (msrun, or a process above it) that run SCRIPT as an msrun worker
(MS_ROLE=MS_WORKER in their environment: not the scheduler, which runs the same script, nor the
`tail -f` of the logs, which inherits MS_ROLE but runs no script) and sends each the signal; prints
their PIDs. Reads /proc (Linux); standard library only, so it starts in a fraction of a second.
"""
import os
import signal
import sys

from ..cli import run_main
from ..errors import ArgumentParser


def _read(pid, name):
    with open(f'/proc/{pid}/{name}', 'rb') as f:
        return f.read()


def _processes():
    """{pid: parent pid} of the processes that can be read."""
    parents = {}
    for entry in os.listdir('/proc'):
        if entry.isdigit():
            try:  # the command name in stat may hold spaces and parentheses: the fields after its last ')'
                parents[int(entry)] = int(_read(entry, 'stat').rsplit(b')', 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue  # gone meanwhile
    return parents


def msrun_workers(root_pid, script):
    """PIDs of the msrun workers below root_pid that run `script` (a file name, e.g. train.py)."""
    parents = _processes()
    below, found = {root_pid}, True
    while found:  # the descendants, level by level
        found = False
        for pid, parent in parents.items():
            if parent in below and pid not in below:
                below.add(pid)
                found = True
    workers = []
    for pid in sorted(below - {root_pid}):
        try:
            environ = _read(pid, 'environ').split(b'\0')
            command = _read(pid, 'cmdline').split(b'\0')
        except OSError:
            continue
        if b'MS_ROLE=MS_WORKER' in environ and any(os.path.basename(a) == script.encode() for a in command[1:]):
            workers.append(pid)
    return workers


def main(argv=None):
    parser = ArgumentParser(prog='python -m src.tools.msrun_workers', description=__doc__.split('\n\n')[0])
    parser.add_argument('pid', type=int, help='msrun, or a process above it')
    parser.add_argument('script', help="the workers' script, e.g. train.py")
    parser.add_argument('--signal', default='USR1', choices=['USR1', 'TERM', 'INT', 'KILL'])
    args = parser.parse_args(argv)
    for pid in msrun_workers(args.pid, args.script):
        try:
            os.kill(pid, getattr(signal, f'SIG{args.signal}'))
            print(pid)
        except ProcessLookupError:
            pass  # ended meanwhile
    return 0


if __name__ == '__main__':
    sys.exit(run_main(main))
