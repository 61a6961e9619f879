"""Training checkpoint names, and which checkpoint `--resume auto` continues from.

checkpoints/epoch_003.ckpt             after epoch 3 (the last keep_checkpoint_max are kept)
checkpoints/epoch_004_step_000120.ckpt inside epoch 4, after its step 120: written when the run is
                                       asked to stop (SIGTERM, SIGINT); removed once epoch 4's own
                                       checkpoint exists
checkpoints/best.ckpt                  the weights of the best validation top-1 (no optimizer state)
"""
import glob
import os
import re

from ..errors import UserError
from ..models.weights import CheckpointReadError
from .checkpoint import read_training_checkpoint

_EPOCH = re.compile(r'epoch_(\d+)\.ckpt$')
_STEP = re.compile(r'epoch_(\d+)_step_(\d+)\.ckpt$')


class ResumeError(UserError):
    """--resume auto cannot continue without losing or silently rewriting recorded epochs."""


def epoch_checkpoint_path(ckpt_dir, epoch):
    return os.path.join(ckpt_dir, f'epoch_{epoch:03d}.ckpt')


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
    for path in step_checkpoints(ckpt_dir):
        epoch, step = map(int, _STEP.search(os.path.basename(path)).groups())
        found.append(((epoch - 1, step), path))
    return sorted(found)


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
