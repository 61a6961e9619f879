"""Training checkpoints (weights, optimizer state, metadata), written so that a crash never leaves a
half-written file. Reading and strictly loading weights is src/models/weights.py's."""
import mindspore as ms

from ..fileio import atomic_write
from ..models.weights import (
    EMA_PREFIX,
    META_PREFIX,
    OPTIMIZER_PREFIX,
    CheckpointMismatchError,
    CheckpointReadError,
    load_checkpoint_strict,
    read_checkpoint,
)


def save_checkpoint_atomic(save_obj, path, append_dict=None):
    """ms.save_checkpoint through src.fileio.atomic_write: an interrupted save leaves the old file
    or the new one, a refused one raises OutputWriteError. Saved with a CRC, which read_checkpoint
    checks: without it a flipped byte inside a tensor loads silently.

    save_obj is a Cell or a list of {'name': str, 'data': Tensor} as ms.save_checkpoint takes.
    """
    return atomic_write(path, lambda tmp: ms.save_checkpoint(save_obj, tmp, append_dict=append_dict, crc_check=True),
                        suffix='.ckpt')


def optimizer_state(net, optimizer):
    """The optimizer's own parameters (moments, step), not the network's. The learning-rate table
    is left out: it follows from the config, and a resumed run may change it (more epochs)."""
    own = {p.name for p in net.get_parameters()}
    return [p for p in optimizer.get_parameters() if p.name not in own and not p.name.startswith('learning_rate')]


# The metadata entry every training checkpoint has, written last. MindSpore's parser accepts a
# file cut at a record boundary (the CRC is only checked when its record is there), and records are
# written in order, so a file that has this entry has everything before it.
LAST_META = 'epoch'


def save_training_checkpoint(path, net, optimizer=None, meta=None, ema_net=None):
    """Network weights, optionally the optimizer state (prefixed 'optimizer.'), the weight EMA
    (ema_net, whose parameter names carry EMA_PREFIX) and scalar metadata (prefixed 'meta.'; a
    resumable one has LAST_META), in one atomically written file. The weights load into a network
    alone (eval, export), the rest is for resuming."""
    items = [{'name': p.name, 'data': p} for p in net.get_parameters()]
    if ema_net is not None:
        items += [{'name': p.name, 'data': p} for p in ema_net.get_parameters()]
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


def load_ema_weights(params, ema_net):
    """Load a training checkpoint's {name: value} EMA weights strictly into ema_net; False (nothing
    loaded) when the checkpoint has none, as one saved by a run without ema."""
    found = {k: v for k, v in params.items() if k.startswith(EMA_PREFIX)}
    if found:
        load_checkpoint_strict(ema_net, found)
    return bool(found)


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
