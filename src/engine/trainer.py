"""The training loop: model, data, optimizer and schedule from a config; per-epoch checkpoints
(keep-last-N plus best by validation top-1), resume, validation, logs and per-epoch metrics."""
import contextlib
import hashlib
import json
import logging
import math
import os
import sys
import time

import numpy as np
import mindspore as ms
from mindspore import nn, ops

from ..data.imagefolder import (DataError, build_dataset, class_names, count_images, readable_images,
                               set_bad_image_policy)
from ..fileio import (LogFileHandler, OutputWriteError, check_writable, make_dirs, remove_stale_temporaries,
                      write_text)
from ..models import create_model, size_overrides
from .checkpoint import load_training_checkpoint, save_training_checkpoint
from .evaluate import evaluate
from .optim import build_optimizer, scaled_lr, warmup_cosine_lr
from .preemption import StopRequest, TrainingStopped
from .resume import (ResumeError, auto_resume, epoch_checkpoint_path, epoch_checkpoints, step_checkpoint_path,
                     step_checkpoints, training_checkpoints)
from .train_step import AnyRank, make_train_step


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss is not finite, or every step overflows)."""


LOG_FORMAT = logging.Formatter('%(asctime)s %(message)s', '%H:%M:%S')


def get_logger(rank):
    """Rank 0 logs to stdout (and, once training starts, to output_dir/train.log); other ranks
    only log warnings."""
    logger = logging.getLogger(f'acmix.rank{rank}')
    logger.handlers.clear()
    logger.propagate = False
    logger.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(LOG_FORMAT)
    logger.addHandler(handler)
    return logger


def log_to_file(logger, output_dir):
    handler = LogFileHandler(os.path.join(make_dirs(output_dir), 'train.log'))
    handler.setFormatter(LOG_FORMAT)
    logger.addHandler(handler)


def build_model(cfg):
    overrides = dict(cfg.model_overrides)
    overrides.update(size_overrides(cfg.arch, cfg.image_size))
    if cfg.drop_path_rate is not None:
        overrides['drop_path_rate'] = cfg.drop_path_rate
    net = create_model(cfg.arch, num_classes=cfg.num_classes, **overrides)
    if hasattr(net, 'check_input_size'):
        net.check_input_size(cfg.image_size)
    return net


class SoftTargetCrossEntropy(nn.Cell):
    """Cross-entropy with probability targets (label-smoothed, mixed), computed in fp32."""

    def construct(self, logits, targets):
        return (-targets * ops.log_softmax(logits.astype(ms.float32), axis=-1)).sum(-1).mean()


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


def read_metrics(path):
    if not os.path.isfile(path):
        return []
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as err:
        raise ResumeError(f'cannot read {path} to resume: {err}; move it away to resume without the earlier '
                          'epochs\' records') from None


class LastCheckpoint:
    """The newest complete checkpoint, for the messages of errors that stop training."""

    def __init__(self, path=None):
        self.path = path

    def __str__(self):
        return self.path or 'none'

    @contextlib.contextmanager
    def named_in_write_errors(self):
        try:
            yield
        except OutputWriteError as err:
            raise OutputWriteError(f'{err}; last complete checkpoint: {self}') from None


def train(cfg, rank=0, group_size=1, on_start=None, init_weights=None):
    """Train as configured; returns the list of per-epoch metric records. Raises TrainingStopped
    (not an error) when SIGTERM/SIGINT stopped it, after writing a checkpoint `--resume auto`
    continues from. on_start() is called once the data, model and checkpoint to resume from have been checked,
    before the first step (train.py saves the resolved config there, so a bad input leaves nothing
    behind). init_weights(net) loads pretrained weights into a fresh network; a resumed run skips it."""
    log = get_logger(rank)
    set_bad_image_policy(cfg.bad_images, distributed=group_size > 1)
    ckpt_dir = os.path.join(cfg.output_dir, 'checkpoints')
    if rank == 0:  # the only writer: a folder it cannot write to must cost nothing
        check_writable(cfg.output_dir)
        check_writable(ckpt_dir)
        for path in remove_stale_temporaries(cfg.output_dir) + remove_stale_temporaries(ckpt_dir):
            log.info('removed %s, left by an interrupted write', path)
    ms.set_seed(cfg.seed)
    np.random.seed(cfg.seed)

    train_classes = class_names(os.path.join(cfg.data_dir, 'train'))
    val_dir = os.path.join(cfg.data_dir, 'val')
    has_val = os.path.isdir(val_dir)
    class_indexing = {n: i for i, n in enumerate(train_classes)}
    if has_val:
        val_classes = class_names(val_dir)
        if val_classes != train_classes:
            only_train = sorted(set(train_classes) - set(val_classes))
            only_val = sorted(set(val_classes) - set(train_classes))
            raise DataError(f'train and val have different class folders: only in train {only_train[:10]}, '
                             f'only in val {only_val[:10]}')

    def train_data(epoch):
        # A fresh pipeline per epoch, seeded by the epoch: a resumed run sees the same data order
        # and augmentations as an uninterrupted one.
        return build_dataset(cfg, 'train', rank, group_size, seed=cfg.seed + epoch, class_indexing=class_indexing)

    steps_per_epoch = train_data(0).get_dataset_size()
    if steps_per_epoch == 0:
        train_dir = os.path.join(cfg.data_dir, 'train')
        raise DataError(f'{count_images(train_dir)} image files in {train_dir} (.jpg, .jpeg, .png, .bmp), fewer '
                        f'than {group_size} device(s) x batch_size {cfg.batch_size}')
    global_batch = cfg.batch_size * group_size
    peak_lr = scaled_lr(cfg.lr, global_batch, cfg.lr_base_batch)
    lrs = warmup_cosine_lr(peak_lr, steps_per_epoch, cfg.epochs, cfg.warmup_epochs, cfg.warmup_lr, cfg.min_lr)

    net = build_model(cfg)
    n_params = sum(p.size for p in net.trainable_params())
    optimizer = build_optimizer(net, cfg.optimizer, lrs, cfg.weight_decay, cfg.momentum, cfg.no_decay_1d)
    loss_scaler = None
    if cfg.amp_level != 'O0':
        net = ms.amp.auto_mixed_precision(net, cfg.amp_level)
        loss_scaler = ms.amp.DynamicLossScaler(scale_value=cfg.loss_scale, scale_factor=2, scale_window=1000)
    grad_reducer = None
    if group_size > 1 and cfg.data_parallel:
        grad_reducer = nn.DistributedGradReducer(optimizer.parameters, mean=True, degree=group_size)
    step_fn = make_train_step(net, SoftTargetCrossEntropy(), optimizer, loss_scaler, cfg.clip_grad, grad_reducer,
                              cfg.jit_level)

    # Where the run starts: after start_epoch epochs and start_step steps of the next one.
    start_epoch, start_step, best_top1 = 0, 0, -1.0
    resumed_losses, resumed_skipped = [], 0
    skipped_in_a_row = 0  # consecutive skipped steps, across epoch ends
    metrics_path = os.path.join(cfg.output_dir, 'metrics.json')
    recorded = read_metrics(metrics_path) if cfg.resume else []  # a new run replaces them
    resume, params = cfg.resume, None
    if resume == 'auto':
        resume, params = auto_resume(ckpt_dir, max((r['epoch'] for r in recorded), default=0), log)
    history = []
    earlier = [] if resume else training_checkpoints(ckpt_dir)
    if earlier:
        raise ResumeError(f'{ckpt_dir} holds the checkpoints of an earlier run (newest: '
                          f'{os.path.basename(earlier[-1][1])}); continue it with --resume auto, '
                          'or start in another output_dir (or remove that folder)')
    if resume:
        meta = load_training_checkpoint(resume, net, optimizer, params)
        start_epoch, start_step = int(meta.get('epoch', 0)), int(meta.get('step', 0))
        best_top1 = float(meta.get('best_top1', -1.0))
        if start_step > steps_per_epoch:
            raise ResumeError(f'{resume} was saved after step {start_step} of an epoch, but an epoch now has '
                              f'{steps_per_epoch} steps (batch_size or device count changed); resume from an '
                              'epoch checkpoint')
        if start_step:
            resumed_losses = [float(v) for v in np.atleast_1d(meta[EPOCH_LOSSES_META])]
            resumed_skipped = int(meta[EPOCH_SKIPPED_META])
        if loss_scaler is not None:
            skipped_in_a_row = restore_loss_scaler(loss_scaler, meta)
        history = [r for r in recorded if r['epoch'] <= start_epoch]
    elif init_weights is not None:
        init_weights(net)

    if group_size > 1:
        # A barrier (an all-reduce returns once every rank has called it): all ranks have read their
        # checkpoint before rank 0 writes or removes one. Without it a rank resuming at an epoch's
        # end, which runs no step before it saves, could replace the file a slower peer is about to
        # choose, and the ranks would start at different places.
        AnyRank()(ms.Tensor(0.0, ms.float32))
    last_saved = LastCheckpoint(resume or None)
    with last_saved.named_in_write_errors():
        if rank == 0:
            log_to_file(log, cfg.output_dir)
            if on_start is not None:
                on_start()
        if resume:
            replaced = [r['epoch'] for r in recorded if r['epoch'] > start_epoch + 1]
            if replaced:
                log.warning('metrics.json records epochs up to %d; this run retrains epochs %d-%d and replaces them',
                            replaced[-1], start_epoch + 1, replaced[-1])
            position = f'step {start_step} of epoch {start_epoch + 1}' if start_step else f'epoch {start_epoch + 1}'
            log.info('resumed from %s: %d epochs done, continuing at %s, lr %.6g', resume, start_epoch, position,
                     float(lrs[min(start_epoch * steps_per_epoch + start_step, len(lrs) - 1)]))
            if loss_scaler is not None:
                log.info('loss scale %g (%s)', float(loss_scaler.scale_value.asnumpy()),
                         'from the checkpoint' if LOSS_SCALE_META in meta else 'loss_scale; the checkpoint has none')
        log.info('%s: %.2fM parameters, %d device(s) x batch %d, %d steps/epoch, peak lr %.4g, %s, amp %s',
                 cfg.arch, n_params / 1e6, group_size, cfg.batch_size, steps_per_epoch, peak_lr, cfg.optimizer,
                 cfg.amp_level)
        if rank == 0:
            # Resumed from an older checkpoint than the newest: the later ones belong to the run being
            # replaced. Kept, keep_checkpoint_max would count them and --resume auto prefer them.
            for position, path in training_checkpoints(ckpt_dir):
                if position > (start_epoch, start_step):
                    os.remove(path)
                    log.info('removed %s: it is past where this run starts', path)

    def save(path, meta_extra, with_optimizer=True):
        meta = {'best_top1': best_top1, **meta_extra}
        if loss_scaler is not None:
            meta.update(loss_scaler_meta(loss_scaler, skipped_in_a_row))
        return save_training_checkpoint(path, net, optimizer if with_optimizer else None, meta)

    total_steps = cfg.epochs * steps_per_epoch
    run_start, run_steps, run_skipped = time.time(), 0, 0
    n_val_images = count_images(val_dir) if has_val else 0
    # An undecodable image: an error naming the file. A refused write: an error naming the file and
    # the last complete checkpoint.
    with readable_images(), StopRequest(group_size) as stop, last_saved.named_in_write_errors():
        for epoch in range(start_epoch, cfg.epochs):
            net.set_train(True)
            first_step = start_step if epoch == start_epoch else 0
            epoch_start = time.time()
            losses = list(resumed_losses) if first_step else []
            skipped_steps = resumed_skipped if first_step else 0
            data = train_data(epoch)
            if first_step:
                # Skipped batches are still read and augmented: the rest of the epoch sees the
                # random state an uninterrupted run would.
                data = data.skip(first_step)
            i, global_step = first_step, epoch * steps_per_epoch + first_step
            loss_scale = 1.0 if loss_scaler is None else float(loss_scaler.scale_value.asnumpy())
            for i, (images, targets) in enumerate(data.create_tuple_iterator(num_epochs=1), first_step + 1):
                loss, overflow, loss_scale = (out.asnumpy().item() for out in step_fn(images, targets))
                global_step = epoch * steps_per_epoch + i
                if not math.isfinite(loss) and loss_scaler is None:
                    raise TrainingError(f'loss is {loss} at epoch {epoch + 1}, step {i} (global step {global_step}); '
                                        f'last good checkpoint: {last_saved}. Lower the lr or enable clip_grad.')
                if overflow:
                    skipped_steps += 1
                    run_skipped += 1
                    skipped_in_a_row += 1
                    if skipped_in_a_row >= cfg.max_skipped_steps:
                        raise TrainingError(
                            f'{skipped_in_a_row} steps in a row skipped for gradient overflow, the last at epoch '
                            f'{epoch + 1}, step {i} (global step {global_step}); loss scale now {loss_scale:g}; last '
                            f'good checkpoint: {last_saved}. Lower the lr or the loss_scale, enable clip_grad '
                            'or train at amp_level O0; on Ascend in saturation mode, +-inf anywhere in the forward '
                            'pass sets the overflow flag.')
                else:
                    skipped_in_a_row = 0
                losses.append(loss)
                run_steps += 1
                at_log_point = i % cfg.log_interval == 0 or i == steps_per_epoch
                if at_log_point:
                    elapsed = time.time() - run_start
                    rate = run_steps * global_batch / elapsed
                    eta = (total_steps - global_step) * elapsed / run_steps
                    scaling = ('' if loss_scaler is None else
                               f' loss scale {loss_scale:g} (skipped {skipped_steps} of {i} steps)')
                    log.info('epoch %d/%d step %d/%d loss %.4f lr %.6g%s %.1f img/s ETA %s', epoch + 1, cfg.epochs, i,
                             steps_per_epoch, np.mean(losses[-cfg.log_interval:]), float(lrs[global_step - 1]),
                             scaling, rate, format_duration(eta))
                # Also after the epoch's last step: validation may outlast a scheduler's grace period.
                if stop.stop_now(at_log_point):
                    if rank == 0:
                        last_saved.path = save(step_checkpoint_path(ckpt_dir, epoch + 1, i),
                                               {'epoch': epoch, 'step': i, EPOCH_SKIPPED_META: skipped_steps,
                                                EPOCH_LOSSES_META: ms.Tensor(np.array(losses, np.float64))})
                    raise _stopped(log, rank, stop, f'epoch {epoch + 1}, step {i} of {steps_per_epoch}', last_saved,
                                   history)
            if i == 0:
                raise DataError(f'no batch of training images could be read in epoch {epoch + 1}')
            if i < steps_per_epoch:
                log.warning('epoch %d ran %d of %d steps: unreadable training images were skipped '
                            '(GLOG_v=2 makes MindSpore name each)', epoch + 1, i, steps_per_epoch)
            record = {'epoch': epoch + 1, 'train_loss': float(np.mean(losses)), 'lr': float(lrs[global_step - 1]),
                      'epoch_time_s': round(time.time() - epoch_start, 2)}
            if loss_scaler is not None:
                record.update(loss_scale=loss_scale, skipped_steps=skipped_steps)
            is_last = epoch + 1 == cfg.epochs
            if has_val and ((cfg.eval_interval and (epoch + 1) % cfg.eval_interval == 0) or is_last):
                val = evaluate(net, build_dataset(cfg, 'val', class_indexing=class_indexing), jit_level=cfg.jit_level)
                record.update(val_top1=val['top1'], val_top5=val['top5'], val_loss=val['loss'])
                unreadable = n_val_images - val['count']
                log.info('epoch %d val top-1 %.4f top-5 %.4f loss %.4f (%d images%s)', epoch + 1, val['top1'],
                         val['top5'], val['loss'], val['count'],
                         f', {unreadable} unreadable left out' if unreadable > 0 else '')
            history.append(record)
            new_best = record.get('val_top1', -1.0) > best_top1
            best_top1 = max(best_top1, record.get('val_top1', -1.0))
            if rank == 0:
                # Metrics first: a kill between the two writes leaves metrics one epoch ahead of
                # the checkpoints, which resume trims, never behind.
                write_text(metrics_path, json.dumps(history, indent=1))
                last_saved.path = save(epoch_checkpoint_path(ckpt_dir, epoch + 1), {'epoch': epoch + 1})
                if new_best:
                    best = save(os.path.join(ckpt_dir, 'best.ckpt'), {'epoch': epoch + 1}, with_optimizer=False)
                    log.info('new best top-1 %.4f -> %s', best_top1, best)
                for _, old in epoch_checkpoints(ckpt_dir)[:-cfg.keep_checkpoint_max]:
                    os.remove(old)
                for passed in step_checkpoints(ckpt_dir):  # all inside epochs now done
                    os.remove(passed)
            if not is_last and stop.stop_now():
                raise _stopped(log, rank, stop, f'the end of epoch {epoch + 1}', last_saved, history)
    # Every rank reports it: with data parallelism all ranks must end with the same trainable weights.
    # With loss scaling they must also have skipped the same steps: equal scales and counts.
    scaling = '' if loss_scaler is None else (f', loss scale {float(loss_scaler.scale_value.asnumpy()):g}, '
                                              f'{run_skipped} of {run_steps} steps skipped')
    print(f'rank {rank}/{group_size}: final weights fingerprint {weights_fingerprint(net)}{scaling}', flush=True)
    return history


def _stopped(log, rank, stop, where, last_saved, history):
    if rank == 0:
        log.info('stopped by %s at %s; checkpoint %s. Run the same command with --resume auto to continue.',
                 stop.reason, where, last_saved)
    else:
        log.warning('rank %d stopped by %s at %s', rank, stop.reason, where)
    return TrainingStopped(stop.reason, where, last_saved.path, history)


def format_duration(seconds):
    """3725 -> '1:02:05'; past a day '2d 03:04:05'."""
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hms = f'{rest // 3600}:{rest % 3600 // 60:02d}:{rest % 60:02d}'
    return f'{days}d {rest // 3600:02d}:{rest % 3600 // 60:02d}:{rest % 60:02d}' if days else hms


def weights_fingerprint(net):
    """A hash of the trainable parameters, to compare weights across ranks or runs. BatchNorm
    running statistics are left out: each rank measures them on its own shard."""
    digest = hashlib.sha256()
    for p in net.trainable_params():
        digest.update(p.name.encode())
        digest.update(p.asnumpy().astype(np.float32).tobytes())
    return digest.hexdigest()[:16]

