"""Read an Ascend rank table (the `server_list` format of MindSpore's rank-table tutorial) for the
rank-table launcher, scripts/run_distribute_train.sh.

    python -m src.tools.rank_table RANK_TABLE_FILE DEVICE_NUM [--server_id ID] [--servers]

prints one line per rank of this server, sorted by rank id: `RANK_ID DEVICE_ID RANK_SIZE`, three
decimal integers (RANK_SIZE is the number of devices in the whole table); with --servers, one line
per server of the table instead (its ranks and devices). A table that lists several
servers needs this server's `server_id`, from --server_id or the SERVER_ID environment variable; a
one-server table needs none. An invalid table, or one that lists another number of devices than
DEVICE_NUM for this server, is a one-line `error: ...` on stderr and exit code 2.

Standard library only (no MindSpore), so it runs before any device set-up.
"""
import json
import os
import re
import sys

from ..cli import run_main
from ..errors import ArgumentParser, UserError


class RankTableError(UserError):
    """The rank table cannot be used as it is."""


def _index(value, what):
    """A rank or device id: a decimal string (as the tutorial writes them) or a JSON integer."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and re.fullmatch(r'[0-9]+', value):
        return int(value)
    raise RankTableError(f'{what} must be a non-negative integer, got {value!r}')


def load_table(path):
    if not os.path.isfile(path):
        raise RankTableError(f'rank table file not found: {path}')
    try:
        with open(path) as f:
            table = json.load(f)
    except (OSError, UnicodeDecodeError) as err:
        raise RankTableError(f'cannot read rank table {path}: {err}') from None
    except json.JSONDecodeError as err:
        raise RankTableError(f'rank table {path} is not valid JSON: {err}') from None
    if not isinstance(table, dict):
        raise RankTableError(f'rank table {path}: expected a JSON object with a server_list')
    return table


def parse_table(table):
    """{server_id: [(rank_id, device_id), ...] sorted by rank id}, after checking the table."""
    if table.get('status', 'completed') != 'completed':
        raise RankTableError(f"rank table status is {table['status']!r}, not 'completed' (not ready for use)")
    servers = table.get('server_list')
    if not isinstance(servers, list) or not servers:
        raise RankTableError('rank table has no server_list (a list of servers with their devices)')
    if 'server_count' in table and str(table['server_count']) != str(len(servers)):
        raise RankTableError(f"rank table server_count is {table['server_count']!r} but server_list "
                             f'lists {len(servers)} server(s)')
    out, owner = {}, {}
    for i, server in enumerate(servers):
        if not isinstance(server, dict) or 'server_id' not in server:
            raise RankTableError(f'server_list[{i}] has no server_id')
        name = str(server['server_id'])
        if name in out:
            raise RankTableError(f'server_id {name} appears twice in server_list')
        devices = server.get('device')
        if not isinstance(devices, list) or not devices:
            raise RankTableError(f'server {name} has no device list')
        ranks, seen = [], {}
        for j, device in enumerate(devices):
            where = f'server {name} device[{j}]'
            if not isinstance(device, dict):
                raise RankTableError(f'{where} is not an object')
            for field in ('device_id', 'rank_id'):
                if field not in device:
                    raise RankTableError(f'{where} has no {field}')
            device_id = _index(device['device_id'], f'{where} device_id')
            rank_id = _index(device['rank_id'], f'{where} rank_id')
            if device_id in seen:
                raise RankTableError(f'server {name} lists device_id {device_id} twice')
            if rank_id in owner:
                raise RankTableError(f'rank_id {rank_id} appears twice (servers {owner[rank_id]} and {name})')
            seen[device_id] = owner[rank_id] = name
            ranks.append((rank_id, device_id))
        out[name] = sorted(ranks)
    if sorted(owner) != list(range(len(owner))):
        raise RankTableError(f'rank ids must be 0..{len(owner) - 1}, each once; the table has '
                             f"{', '.join(map(str, sorted(owner)))}")
    # Ranks go server by server, in the order of server_list: the model zoo's merge_hccl.py writes
    # a cluster's table that way (the first server's 8 devices are ranks 0-7, the next one's 8-15).
    first = 0
    for name, ranks in out.items():
        ids = [rank for rank, _ in ranks]
        if ids != list(range(first, first + len(ids))):
            raise RankTableError(f"server {name} has rank ids {', '.join(map(str, ids))}, expected "
                                 f'{_span(first, first + len(ids) - 1)}: rank ids go server by server in the order '
                                 'of server_list, each server a block of consecutive ids')
        first += len(ids)
    return out


def _span(a, b):
    return str(a) if a == b else f'{a}-{b}'


def describe_servers(servers, this_server):
    """One line per server: its ranks and devices, this server marked."""
    return [f"server {name}: ranks {_span(ranks[0][0], ranks[-1][0])} on devices "
            f"{', '.join(str(d) for _, d in ranks)}{' (this server)' if name == this_server else ''}"
            for name, ranks in servers.items()]


def ranks_for_server(table, device_num, server_id=None):
    """(this server's name, its [(rank_id, device_id), ...], {server: its ranks} for the whole table)."""
    servers = parse_table(table)
    if server_id:
        if server_id not in servers:
            raise RankTableError(f"SERVER_ID {server_id} is not in the rank table (servers: {', '.join(servers)})")
        name = server_id
    elif len(servers) == 1:
        name = next(iter(servers))
    else:
        raise RankTableError(f"the rank table lists {len(servers)} servers ({', '.join(servers)}): set SERVER_ID "
                             "to this machine's server_id")
    ranks = servers[name]
    if len(ranks) != device_num:
        raise RankTableError(f'the rank table lists {len(ranks)} device(s) for server {name}, but DEVICE_NUM is '
                             f'{device_num}: pass DEVICE_NUM {len(ranks)} or use another table')
    return name, ranks, servers


def main(argv=None):
    parser = ArgumentParser(prog='python -m src.tools.rank_table',
                                     description=__doc__.split('\n\n')[0])
    parser.add_argument('rank_table_file')
    parser.add_argument('device_num', type=int)
    parser.add_argument('--server_id', default=os.environ.get('SERVER_ID', ''),
                        help="this machine's server_id in the table (default: $SERVER_ID)")
    parser.add_argument('--servers', action='store_true',
                        help="print each server's ranks and devices instead (DRY_RUN=1 of the launcher)")
    args = parser.parse_args(argv)
    name, ranks, servers = ranks_for_server(load_table(args.rank_table_file), args.device_num, args.server_id)
    if args.servers:
        print('\n'.join(describe_servers(servers, name)))
        return 0
    rank_size = sum(len(r) for r in servers.values())
    for rank_id, device_id in ranks:
        print(rank_id, device_id, rank_size)
    return 0


if __name__ == '__main__':
    sys.exit(run_main(main))
