"""Checkpoint I/O that never leaves a half-written file and never loads silently-wrong weights."""
import os
import tempfile

import mindspore as ms

# Training checkpoints keep the optimizer state and scalar metadata beside the weights, under these
# prefixes, so that the same file loads into a bare network for evaluation and export.
OPTIMIZER_PREFIX = 'optimizer.'
META_PREFIX = 'meta.'


class CheckpointMismatchError(ValueError):
    """A checkpoint does not fit the network it is loaded into."""


def save_checkpoint_atomic(save_obj, path, append_dict=None):
    """ms.save_checkpoint to a temporary file in the target folder, then rename it into place,
    so an interrupted save leaves either the old file or the new one, never a truncated one.

    save_obj is a Cell or a list of {'name': str, 'data': Tensor} as ms.save_checkpoint takes.
    """
    path = os.path.abspath(path)
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix='.' + os.path.basename(path) + '.', suffix='.tmp.ckpt', dir=folder)
    os.close(fd)
    try:
        ms.save_checkpoint(save_obj, tmp, append_dict=append_dict)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


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
        if not os.path.isfile(path_or_dict):
            raise FileNotFoundError(f'checkpoint not found: {path_or_dict}')
        params = ms.load_checkpoint(path_or_dict)
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


def save_training_checkpoint(path, net, optimizer=None, meta=None):
    """Network weights, optionally the optimizer state (prefixed 'optimizer.') and scalar
    metadata (prefixed 'meta.'), in one atomically written file. The weights load into a network
    alone (eval, export), the rest is for resuming."""
    items = [{'name': p.name, 'data': p} for p in net.get_parameters()]
    if optimizer is not None:
        items += [{'name': OPTIMIZER_PREFIX + p.name, 'data': p} for p in optimizer_state(net, optimizer)]
    append = {META_PREFIX + k: v for k, v in (meta or {}).items()}
    return save_checkpoint_atomic(items, path, append_dict=append or None)


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


def load_training_checkpoint(path, net, optimizer=None):
    """Restore weights (strictly) and, if given, the optimizer state; returns the meta dict."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f'checkpoint not found: {path}')
    weights, opt_state, meta = split_training_checkpoint(ms.load_checkpoint(path))
    load_checkpoint_strict(net, weights)
    if optimizer is not None:
        expected = {p.name for p in optimizer_state(net, optimizer)}
        missing = sorted(expected - set(opt_state))
        if missing:
            raise CheckpointMismatchError(f'{path} has no optimizer state for: {", ".join(missing[:10])}; '
                                          'it cannot be resumed (it can still be evaluated)')
        ms.load_param_into_net(optimizer, {k: v for k, v in opt_state.items() if k in expected}, strict_load=True)
    return meta
