"""Checkpoint I/O that never leaves a half-written file and never loads silently-wrong weights."""
import os

import mindspore as ms

from ..errors import UserError
from ..fileio import atomic_write

# Training checkpoints keep the optimizer state and scalar metadata beside the weights, under these
# prefixes, so that the same file loads into a bare network for evaluation and export.
OPTIMIZER_PREFIX = 'optimizer.'
META_PREFIX = 'meta.'


class CheckpointMismatchError(UserError):
    """A checkpoint does not fit the network it is loaded into."""


class CheckpointReadError(UserError):
    """A checkpoint file cannot be read at all."""


def save_checkpoint_atomic(save_obj, path, append_dict=None):
    """ms.save_checkpoint through src.fileio.atomic_write: an interrupted save leaves the old file
    or the new one, a refused one raises OutputWriteError. Saved with a CRC, which read_checkpoint
    checks: without it a flipped byte inside a tensor loads silently.

    save_obj is a Cell or a list of {'name': str, 'data': Tensor} as ms.save_checkpoint takes.
    """
    return atomic_write(path, lambda tmp: ms.save_checkpoint(save_obj, tmp, append_dict=append_dict, crc_check=True),
                        suffix='.ckpt')


def read_checkpoint(path):
    """{name: Parameter} of a checkpoint file; CheckpointReadError if it cannot be read
    (truncated, damaged, empty or not a MindSpore checkpoint). Files saved without a CRC load too."""
    if not os.path.isfile(path):
        raise CheckpointReadError(f'checkpoint not found: {path}')
    try:
        return ms.load_checkpoint(path, crc_check=True)
    except (ValueError, RuntimeError, OSError, TypeError):
        # MindSpore's own message guesses at permissions; the size tells truncated from empty.
        raise CheckpointReadError(f'cannot read the checkpoint {path} ({os.path.getsize(path)} bytes): it is '
                                  'truncated, damaged or not a MindSpore checkpoint') from None


def describe_mismatch(missing, unexpected, mismatched=(), limit=20):
    """A readable list of mismatched checkpoint keys."""
    lines = []
    for title, keys in (('missing from the checkpoint', missing), ('unexpected in the checkpoint', unexpected),
                        ('with the wrong shape', mismatched)):
        if keys:
            shown = ', '.join(keys[:limit]) + (f', ... ({len(keys) - limit} more)' if len(keys) > limit else '')
            lines.append(f'  {len(keys)} {title}: {shown}')
    return '\n'.join(lines)


def load_checkpoint_strict(net, path_or_dict, skip_prefixes=()):
    """Load a checkpoint into `net`, raising CheckpointMismatchError if any parameter is missing,
    unexpected or of the wrong shape (ms.load_param_into_net itself only returns the lists).

    skip_prefixes: parameter-name prefixes that are neither loaded nor required, e.g. ('fc.',)
    to fine-tune with a new classifier head.
    """
    if isinstance(path_or_dict, str):
        params = read_checkpoint(path_or_dict)
    else:
        params = dict(path_or_dict)
    # Optimizer state and metadata of training checkpoints are not the network's.
    params = {k: v for k, v in params.items() if not k.startswith((OPTIMIZER_PREFIX, META_PREFIX))}
    skip = tuple(skip_prefixes)
    params = {k: v for k, v in params.items() if not (skip and k.startswith(skip))}
    own = {p.name: p for p in net.get_parameters() if not (skip and p.name.startswith(skip))}
    mismatched = [f'{k} {tuple(v.shape)} vs {tuple(own[k].shape)}' for k, v in params.items()
                  if k in own and tuple(v.shape) != tuple(own[k].shape)]
    missing = [k for k in own if k not in params]
    unexpected = [k for k in params if k not in own]
    if missing or unexpected or mismatched:
        raise CheckpointMismatchError('checkpoint does not match the network:\n'
                                      + describe_mismatch(missing, unexpected, mismatched))
    weights = {k: v for k, v in params.items() if k in own}
    not_loaded, _ = ms.load_param_into_net(net, weights, strict_load=True)
    not_loaded = [k for k in not_loaded if k in own]
    if not_loaded:
        raise CheckpointMismatchError('parameters not loaded: ' + ', '.join(not_loaded))
    return net


def optimizer_state(net, optimizer):
    """The optimizer's own parameters (moments, step), not the network's. The learning-rate table
    is left out: it follows from the config, and a resumed run may change it (more epochs)."""
    own = {p.name for p in net.get_parameters()}
    return [p for p in optimizer.get_parameters() if p.name not in own and not p.name.startswith('learning_rate')]


# The metadata entry every training checkpoint has, written last. MindSpore's parser accepts a
# file cut at a record boundary (the CRC is only checked when its record is there), and records are
# written in order, so a file that has this entry has everything before it.
LAST_META = 'epoch'


def save_training_checkpoint(path, net, optimizer=None, meta=None):
    """Network weights, optionally the optimizer state (prefixed 'optimizer.') and scalar
    metadata (prefixed 'meta.'; a resumable one has LAST_META), in one atomically written file. The
    weights load into a network alone (eval, export), the rest is for resuming."""
    items = [{'name': p.name, 'data': p} for p in net.get_parameters()]
    if optimizer is not None:
        items += [{'name': OPTIMIZER_PREFIX + p.name, 'data': p} for p in optimizer_state(net, optimizer)]
    meta = dict(meta or {})
    append = {META_PREFIX + k: v for k, v in meta.items() if k != LAST_META}
    if LAST_META in meta:
        append[META_PREFIX + LAST_META] = meta[LAST_META]
    return save_checkpoint_atomic(items, path, append_dict=append or None)


def read_training_checkpoint(path):
    """read_checkpoint, and CheckpointReadError unless the file is a whole training checkpoint."""
    params = read_checkpoint(path)
    if META_PREFIX + LAST_META not in params:
        raise CheckpointReadError(f'cannot resume from {path}: it has no training metadata (it is truncated, or '
                                  'holds weights only, like best.ckpt and converted checkpoints)')
    return params


def split_training_checkpoint(params):
    """{name: Parameter} -> (weights, optimizer state with the prefix removed, meta as Python scalars)."""
    weights, opt_state, meta = {}, {}, {}
    for name, value in params.items():
        if name.startswith(OPTIMIZER_PREFIX):
            opt_state[name[len(OPTIMIZER_PREFIX):]] = value
        elif name.startswith(META_PREFIX):
            arr = value.asnumpy()
            meta[name[len(META_PREFIX):]] = arr.item() if arr.size == 1 else arr
        else:
            weights[name] = value
    return weights, opt_state, meta


def load_training_checkpoint(path, net, optimizer=None, params=None):
    """Restore weights (strictly) and, if given, the optimizer state; returns the meta dict.
    params: the file's content if the caller has already read it with read_training_checkpoint."""
    weights, opt_state, meta = split_training_checkpoint(read_training_checkpoint(path) if params is None else params)
    load_checkpoint_strict(net, weights)
    if optimizer is not None:
        expected = {p.name for p in optimizer_state(net, optimizer)}
        missing = sorted(expected - set(opt_state))
        if missing:
            raise CheckpointMismatchError(f'{path} has no optimizer state for: {", ".join(missing[:10])}; '
                                          'it cannot be resumed (it can still be evaluated)')
        ms.load_param_into_net(optimizer, {k: v for k, v in opt_state.items() if k in expected}, strict_load=True)
    return meta
