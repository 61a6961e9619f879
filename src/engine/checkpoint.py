"""The training checkpoint format, in one place: file names, what a file holds (weights, optimizer
state, the weight EMA, metadata), the metadata keys and the loss-scaler state, which checkpoint
`--resume auto` continues from, and saving so that a crash never leaves a half-written file.

checkpoints/epoch_003.ckpt             after epoch 3 (the last keep_checkpoint_max are kept)
checkpoints/epoch_004_step_000120.ckpt inside epoch 4, after its step 120: written when the run is
                                       asked to stop (SIGTERM, SIGINT); removed once epoch 4's own
                                       checkpoint exists
checkpoints/best.ckpt                  the weights of the best validation top-1 (no optimizer state)

Inside a file, the weights are under the network's parameter names and the training extras under
prefixes (OPTIMIZER_PREFIX, EMA_PREFIX, META_PREFIX); those prefixes are defined with the weight
reader in src/models/weights.py, which the model layer needs to load a training checkpoint's weights
alone. Reading and strictly loading weights is that module's.
"""
import glob
import os
import re

import mindspore as ms

from ..errors import UserError
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


# ----------------------------------------------------------------------------- metadata
# The metadata entry every training checkpoint has, written last: the epochs done. MindSpore's parser
# accepts a file cut at a record boundary (the CRC is only checked when its record is there), and
# records are written in order, so a file that has this entry has everything before it.
LAST_META = 'epoch'
STEP_META = 'step'  # a mid-epoch checkpoint: the steps done of the next epoch
BEST_TOP1_META = 'best_top1'
# Training-checkpoint metadata of the loss scaler: a resumed run continues with the scale, the
# scaler's count of overflow-free steps towards the next increase, and the streak of skipped steps
# the uninterrupted run would have had.
LOSS_SCALE_META = 'loss_scale'
LOSS_SCALE_COUNTER_META = 'loss_scale_counter'
SKIPPED_IN_A_ROW_META = 'skipped_in_a_row'


def loss_scaler_meta(loss_scaler, skipped_in_a_row):
    return {LOSS_SCALE_META: float(loss_scaler.scale_value.asnumpy()),
            LOSS_SCALE_COUNTER_META: int(loss_scaler.counter.asnumpy()), SKIPPED_IN_A_ROW_META: skipped_in_a_row}


def restore_loss_scaler(loss_scaler, meta):
    """Set a DynamicLossScaler's state from checkpoint metadata; returns the streak of skipped
    steps. A checkpoint without it (saved by a run without loss scaling) leaves the scaler at its
    configured initial state."""
    if LOSS_SCALE_META not in meta:
        return 0
    loss_scaler.scale_value.set_data(ms.Tensor(meta[LOSS_SCALE_META], ms.float32))
    loss_scaler.counter.set_data(ms.Tensor(meta[LOSS_SCALE_COUNTER_META], ms.int32))
    return int(meta[SKIPPED_IN_A_ROW_META])


# A mid-epoch checkpoint also holds the epoch's losses and skipped steps so far: the epoch's record
# after resuming equals the uninterrupted run's.
EPOCH_LOSSES_META = 'epoch_losses'
EPOCH_SKIPPED_META = 'epoch_skipped_steps'
# Steps count optimizer updates: a step checkpoint's position means accumulation_steps times as many
# batches, so a run resumes from one only with the same accumulation_steps.
ACCUMULATION_META = 'accumulation_steps'
# The steps an epoch had in the run that saved it: a run with another number (batch_size,
# accumulation_steps or device count changed) resumes from an epoch checkpoint on its own schedule, at
# the saved epoch, and says so.
STEPS_PER_EPOCH_META = 'steps_per_epoch'


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
        for name, saved_as in getattr(optimizer, 'SAVED_AS', {}).items():  # a checkpoint of an earlier version
            if name not in opt_state and saved_as in opt_state:
                opt_state[name] = ms.Parameter(ms.Tensor(opt_state[saved_as].asnumpy()), name=name)
        expected = {p.name for p in optimizer_state(net, optimizer)}
        missing = sorted(expected - set(opt_state))
        if missing:
            raise CheckpointMismatchError(f'{path} has no optimizer state for: {", ".join(missing[:10])}; '
                                          'it cannot be resumed (it can still be evaluated)')
        ms.load_param_into_net(optimizer, {k: v for k, v in opt_state.items() if k in expected}, strict_load=True)
    return meta


# ----------------------------------------------------------------------------- names and resume discovery
_EPOCH = re.compile(r'epoch_(\d+)\.ckpt$')
_STEP = re.compile(r'epoch_(\d+)_step_(\d+)\.ckpt$')


class ResumeError(UserError):
    """--resume auto cannot continue without losing or silently rewriting recorded epochs."""


def epoch_checkpoint_path(ckpt_dir, epoch):
    return os.path.join(ckpt_dir, f'epoch_{epoch:03d}.ckpt')


def best_checkpoint_path(ckpt_dir):
    return os.path.join(ckpt_dir, 'best.ckpt')


def step_checkpoint_path(ckpt_dir, epoch, step):
    """Inside epoch `epoch` (1-based), after `step` of its steps."""
    return os.path.join(ckpt_dir, f'epoch_{epoch:03d}_step_{step:06d}.ckpt')


def epoch_checkpoints(ckpt_dir):
    """[(epoch, path)] of the per-epoch checkpoints, sorted by epoch."""
    found = []
    for path in glob.glob(os.path.join(glob.escape(ckpt_dir), 'epoch_*.ckpt')):
        m = _EPOCH.search(os.path.basename(path))
        if m:
            found.append((int(m.group(1)), path))
    return sorted(found)


def step_checkpoints(ckpt_dir):
    """Paths of the mid-epoch checkpoints."""
    return sorted(p for p in glob.glob(os.path.join(glob.escape(ckpt_dir), 'epoch_*_step_*.ckpt'))
                  if _STEP.search(os.path.basename(p)))


def training_checkpoints(ckpt_dir):
    """[((epochs done, steps into the next epoch), path)], oldest first."""
    found = [((epoch, 0), path) for epoch, path in epoch_checkpoints(ckpt_dir)]
    return sorted(found + [(checkpoint_position(path), path) for path in step_checkpoints(ckpt_dir)])


def checkpoint_position(path):
    """(epochs done, steps into the next epoch) of a checkpoint, from its name; None for another name."""
    name = os.path.basename(path)
    step = _STEP.search(name)
    if step:
        return int(step.group(1)) - 1, int(step.group(2))
    epoch = _EPOCH.search(name)
    return (int(epoch.group(1)), 0) if epoch else None


def describe_position(position):
    """(3, 0) -> 'the end of epoch 3'; (3, 5) -> 'step 5 of epoch 4'."""
    epochs, step = position
    return f'step {step} of epoch {epochs + 1}' if step else f'the end of epoch {epochs}'


def auto_resume(ckpt_dir, recorded_epochs, log):
    """(path, its content) of the newest checkpoint in ckpt_dir that can be read, or (None, None)
    to start from scratch. Unreadable newer ones are passed over with a warning naming them.

    recorded_epochs: the last epoch in metrics.json (0 if none). A run writes the metrics of an
    epoch just before its checkpoint, so after any interruption the metrics are at most one epoch
    ahead of the newest checkpoint; more than one means epochs whose checkpoints are lost, and
    continuing would retrain them and replace their records. That takes an explicit --resume PATH.
    """
    passed_over = []
    chosen, params, done = None, None, 0
    for (epochs_done, _), path in reversed(training_checkpoints(ckpt_dir)):
        try:
            params = read_training_checkpoint(path)
        except CheckpointReadError as err:
            passed_over.append(path)
            log.warning('resume=auto: %s; trying the one before it', err)
            continue
        chosen, done = path, epochs_done
        break
    if recorded_epochs > done + 1:
        what = f'the newest readable checkpoint is {chosen}' if chosen else 'no checkpoint can be read'
        unreadable = f' (unreadable: {", ".join(os.path.basename(p) for p in passed_over)})' if passed_over else ''
        raise ResumeError(f'--resume auto: metrics.json records {recorded_epochs} epochs but {what}{unreadable}; '
                          f'continuing would retrain epochs {done + 1}-{recorded_epochs} and replace their '
                          'metrics. To do that, pass that checkpoint as --resume PATH (or start a new output_dir).')
    if chosen is None:
        log.info('resume=auto: no %scheckpoint in %s, starting from scratch', 'readable ' if passed_over else '',
                 ckpt_dir)
        return None, None
    return chosen, params
