"""What the ranks of a data-parallel job agree on outside the training step: which of them write
output_dir, and where a resumed run starts. Several servers need not share a filesystem, so each
keeps its own copy of what its ranks need to resume; both agreements hold whether output_dir is
shared or not."""
import os
import secrets

import mindspore as ms
import numpy as np

from ..fileio import claim_file, make_dirs
from .checkpoint import ResumeError, checkpoint_position, describe_position, training_checkpoints
from .train_step import SumOverRanks

_WRITER_CLAIM = '.acmix-writer-'


def gather_over_ranks(values, rank, group_size):
    """Every rank's `values` (small non-negative integers below 2**24), on every rank:
    array (group_size, len(values)). A collective call: every rank must make it, and it returns
    once all have (it is also a barrier)."""
    table = np.zeros((group_size, len(values)), np.float32)
    table[rank] = values
    return SumOverRanks()(ms.Tensor(table)).asnumpy().round().astype(np.int64)


def claim_output_dir(output_dir, rank, group_size):
    """Whether this rank writes output_dir (checkpoints, metrics, config): rank 0, and the first rank
    of any other filesystem, that is of a server whose output_dir is not rank 0's (nothing shared
    between servers). Returns (writes, ranks that write).

    Rank 0 claims a file named by a token of this run before the others try: a rank that sees its
    claim shares rank 0's folder and leaves the writing to it; on another filesystem exactly one
    rank's exclusive creation succeeds."""
    token = int(gather_over_ranks([secrets.randbelow(2 ** 24 - 1) + 1 if rank == 0 else 0], rank, group_size)[0, 0])
    claim = os.path.join(output_dir, f'{_WRITER_CLAIM}{token}')
    make_dirs(output_dir)
    if rank == 0:
        claim_file(claim)
    gather_over_ranks([0], rank, group_size)  # rank 0's claim is there before any other rank looks
    writes = rank == 0 or claim_file(claim)
    writers = [r for r, flag in enumerate(gather_over_ranks([int(writes)], rank, group_size)[:, 0]) if flag]
    if writes:  # the claims of earlier runs
        for name in os.listdir(output_dir):
            if name.startswith(_WRITER_CLAIM) and name != os.path.basename(claim):
                os.remove(os.path.join(output_dir, name))
    return writes, writers


def agree_on_resume(ckpt_dir, path, rank, group_size, log):
    """The checkpoint this rank resumes from (None: from scratch) so that every rank starts at the
    same position. `path`: the one --resume auto chose in this rank's ckpt_dir. Ranks whose folders
    differ (servers that do not share output_dir, one of them stopped before its last write) resume
    at the newest position they all have. A ResumeError on every rank when that is impossible."""
    own = checkpoint_position(path) if path else None
    table = gather_over_ranks([1, *own] if own else [0, 0, 0], rank, group_size)
    positions = [tuple(map(int, row[1:])) if row[0] else None for row in table]
    if len(set(positions)) == 1:
        return path
    described = '; '.join(f'rank {r}: {describe_position(p) if p else "no checkpoint"}'
                          for r, p in enumerate(positions))
    if None in positions:
        raise ResumeError(f'--resume auto: some ranks have no checkpoint to resume from and others do ({described}). '
                          'Every server needs the checkpoints in its output_dir: copy them there, or pass a '
                          'checkpoint that every server has as --resume PATH')
    agreed = min(positions)
    chosen = path if own == agreed else next((p for position, p in training_checkpoints(ckpt_dir)
                                              if position == agreed), None)
    missing = [r for r, flag in enumerate(gather_over_ranks([int(chosen is None)], rank, group_size)[:, 0]) if flag]
    if missing:
        raise ResumeError(f'--resume auto: the ranks have checkpoints at different positions ({described}) and '
                          f'rank(s) {", ".join(map(str, missing))} have none at {describe_position(agreed)}, '
                          'the newest all could start from; pass a checkpoint that every server has as --resume PATH')
    if chosen != path:
        log.warning('rank %d resumes from %s, not from its newer %s: %s is the newest position every rank has (%s)',
                    rank, chosen, path, describe_position(agreed), described)
    return chosen
