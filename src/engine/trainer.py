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

import mindspore as ms
import numpy as np

from ..data.imagefolder import (
    DataError,
    build_dataset,
    class_names,
    count_images,
    readable_images,
    set_bad_image_policy,
)
from ..errors import UserError
from ..fileio import LogFileHandler, OutputWriteError, check_writable, make_dirs, remove_stale_temporaries, write_text
from ..models import build_model
from .checkpoint import (
    ACCUMULATION_META,
    BEST_TOP1_META,
    EPOCH_LOSSES_META,
    EPOCH_SKIPPED_META,
    LAST_META,
    LOSS_SCALE_META,
    STEP_META,
    STEPS_PER_EPOCH_META,
    ResumeError,
    auto_resume,
    best_checkpoint_path,
    describe_position,
    epoch_checkpoint_path,
    epoch_checkpoints,
    load_ema_weights,
    load_training_checkpoint,
    loss_scaler_meta,
    read_training_checkpoint,
    restore_loss_scaler,
    save_training_checkpoint,
    step_checkpoint_path,
    step_checkpoints,
    training_checkpoints,
)
from .evaluate import evaluate
from .optim import build_lr_schedule, scaled_lr
from .preemption import StopRequest, TrainingStopped
from .ranks import agree_on_resume, claim_output_dir
from .step import build_training_step
from .train_step import AnyRank


class TrainingError(UserError):
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


def read_metrics(path):
    if not os.path.isfile(path):
        return []
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as err:
        raise ResumeError(f'cannot read {path} to resume: {err}; move it away to resume without the earlier '
                          'epochs\' records') from None


class EpochState:
    """What an epoch has read of its steps' outputs so far."""

    def __init__(self, losses, skipped, loss_scale=1.0):
        self.losses, self.skipped, self.loss_scale = losses, skipped, loss_scale


def updates(batches, accumulation_steps):
    """The (images, targets) batches of an iterator grouped into the lists of one optimizer update
    each; a last incomplete group is dropped."""
    group = []
    for batch in batches:
        group.append(batch)
        if len(group) == accumulation_steps:
            yield group
            group = []


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
    continues from. on_start() is called once the data, model and checkpoint to resume from have been
    checked, before the first step (train.py saves the resolved config there, so a bad input leaves
    nothing behind). init_weights(net) loads pretrained weights into a fresh network; a resumed run
    skips it."""
    return TrainingRun(cfg, rank, group_size).run(on_start, init_weights)


def check_class_folders(data_dir):
    """{class name: index} of data_dir/train, and data_dir/val if it exists (else None), whose class
    folders must be the same."""
    train_classes = class_names(os.path.join(data_dir, 'train'))
    val_dir = os.path.join(data_dir, 'val')
    if not os.path.isdir(val_dir):
        return {n: i for i, n in enumerate(train_classes)}, None
    val_classes = class_names(val_dir)
    if val_classes != train_classes:
        only_train = sorted(set(train_classes) - set(val_classes))
        only_val = sorted(set(val_classes) - set(train_classes))
        raise DataError(f'train and val have different class folders: only in train {only_train[:10]}, '
                        f'only in val {only_val[:10]}')
    return {n: i for i, n in enumerate(train_classes)}, val_dir


class TrainingRun:
    """One run of train(): everything is built and checked in __init__ (nothing written but the
    removal of stale temporary files), then run() resumes or starts, and trains epoch by epoch."""

    def __init__(self, cfg, rank=0, group_size=1):
        self.cfg, self.rank, self.group_size = cfg, rank, group_size
        self.log = get_logger(rank)
        set_bad_image_policy(cfg.bad_images, distributed=group_size > 1)
        self.ckpt_dir = os.path.join(cfg.output_dir, 'checkpoints')
        self.metrics_path = os.path.join(cfg.output_dir, 'metrics.json')
        if rank == 0:  # a folder it cannot write to must cost nothing
            check_writable(cfg.output_dir)
        # The ranks that write output_dir: rank 0, and one rank of each server that does not share it.
        self.writes, self.writers = (claim_output_dir(cfg.output_dir, rank, group_size) if group_size > 1
                                     else (True, [0]))
        if self.writes:
            check_writable(self.ckpt_dir)
            for path in remove_stale_temporaries(cfg.output_dir) + remove_stale_temporaries(self.ckpt_dir):
                self.log.info('removed %s, left by an interrupted write', path)
        ms.set_seed(cfg.seed)
        np.random.seed(cfg.seed)

        self.class_indexing, self.val_dir = check_class_folders(cfg.data_dir)
        # A step is an optimizer update of accumulation_steps batches; an epoch's last batches that do
        # not fill an update (fewer than accumulation_steps) are left out, as drop_remainder leaves out
        # the images that do not fill a batch.
        self.accumulation = cfg.accumulation_steps
        self.steps_per_epoch = self.train_data(0).get_dataset_size() // self.accumulation
        if self.steps_per_epoch == 0:
            train_dir = os.path.join(cfg.data_dir, 'train')
            raise DataError(f'{count_images(train_dir)} image files in {train_dir} (.jpg, .jpeg, .png, .bmp), fewer '
                            f'than {group_size} device(s) x batch_size {cfg.batch_size} x accumulation_steps '
                            f'{self.accumulation}')
        self.global_batch = cfg.batch_size * group_size * self.accumulation
        self.peak_lr = scaled_lr(cfg.lr, self.global_batch, cfg.lr_base_batch)
        self.lrs = build_lr_schedule(cfg, self.global_batch, self.steps_per_epoch)

        net = build_model(cfg)
        self.n_params = sum(p.size for p in net.trainable_params())
        # The EMA lives in a second instance of the model, evaluated as it is.
        built = build_training_step(cfg, net, self.lrs, group_size, ema_net=build_model(cfg) if cfg.ema else None)
        self.net, self.optimizer, self.loss_scaler = built.net, built.optimizer, built.loss_scaler
        self.ema_net, self.ema, self.step_fn = built.ema_net, built.ema, built.step

        # Where the run starts (after start_epoch epochs and start_step steps of the next one), and
        # the state an uninterrupted run would have there.
        self.start_epoch, self.start_step, self.best_top1 = 0, 0, -1.0
        self.resumed_losses, self.resumed_skipped = [], 0
        self.ema_restarted = False  # resumed from a checkpoint without EMA weights: the average starts again
        self.skipped_in_a_row = 0  # consecutive skipped steps, across epoch ends
        self.history = []
        self.last_saved = LastCheckpoint()
        self.run_start, self.run_steps, self.run_skipped = None, 0, 0

    def train_data(self, epoch):
        # A fresh pipeline per epoch, seeded by the epoch: a resumed run sees the same data order
        # and augmentations as an uninterrupted one.
        return build_dataset(self.cfg, 'train', self.rank, self.group_size, seed=self.cfg.seed + epoch,
                             class_indexing=self.class_indexing)

    def run(self, on_start=None, init_weights=None):
        recorded, resume, meta = self._resume(init_weights)
        if self.group_size > 1:
            # A barrier (an all-reduce returns once every rank has called it): all ranks have read their
            # checkpoint before a writer writes or removes one. Without it a rank resuming at an epoch's
            # end, which runs no step before it saves, could replace the file a slower peer is about to
            # choose, and the ranks would start at different places.
            AnyRank()(ms.Tensor(0.0, ms.float32))
        self.last_saved = LastCheckpoint(resume or None)
        with self.last_saved.named_in_write_errors():
            self._announce_start(on_start, recorded, resume, meta)

        cfg = self.cfg
        n_val_images = count_images(self.val_dir) if self.val_dir else 0
        self.run_start = time.time()
        # An undecodable image: an error naming the file. A refused write: an error naming the file and
        # the last complete checkpoint.
        with readable_images(data_dir=cfg.data_dir), StopRequest(self.group_size) as stop, \
                self.last_saved.named_in_write_errors():
            for epoch in range(self.start_epoch, cfg.epochs):
                record = self._train_epoch(epoch, stop)
                is_last = epoch + 1 == cfg.epochs
                if self.val_dir and ((cfg.eval_interval and (epoch + 1) % cfg.eval_interval == 0) or is_last):
                    record.update(self._validate(epoch, n_val_images))
                self.history.append(record)
                self._save_epoch(epoch, record)
                if not is_last and stop.stop_now():
                    raise self._stopped(stop, f'the end of epoch {epoch + 1}')
        # Every rank reports it: with data parallelism all ranks must end with the same trainable weights.
        # With loss scaling they must also have skipped the same steps: equal scales and counts.
        scaling = '' if self.loss_scaler is None else (f', loss scale {self._loss_scale():g}, '
                                                       f'{self.run_skipped} of {self.run_steps} steps skipped')
        print(f'rank {self.rank}/{self.group_size}: final weights fingerprint {weights_fingerprint(self.net)}'
              f'{scaling}', flush=True)
        return self.history

    def _loss_scale(self):
        return 1.0 if self.loss_scaler is None else float(self.loss_scaler.scale_value.asnumpy())

    def _resume(self, init_weights):
        """Loads the checkpoint to resume from (cfg.resume, or the newest readable one for 'auto') and
        sets the start position; without one, init_weights. Returns the earlier run's metric records,
        the checkpoint path (None for a new run) and its metadata."""
        cfg, ckpt_dir = self.cfg, self.ckpt_dir
        recorded = read_metrics(self.metrics_path) if cfg.resume else []  # a new run replaces them
        resume, params, meta = cfg.resume, None, {}
        if resume == 'auto':
            resume, params = auto_resume(ckpt_dir, max((r['epoch'] for r in recorded), default=0), self.log)
            if self.group_size > 1:  # the servers' folders may differ: all ranks start at one position
                agreed = agree_on_resume(ckpt_dir, resume, self.rank, self.group_size, self.log)
                resume, params = agreed, params if agreed == resume else None
        earlier = [] if resume else training_checkpoints(ckpt_dir)
        if earlier:
            raise ResumeError(f'{ckpt_dir} holds the checkpoints of an earlier run (newest: '
                              f'{os.path.basename(earlier[-1][1])}); continue it with --resume auto, '
                              'or start in another output_dir (or remove that folder)')
        if not resume:
            if init_weights is not None:
                init_weights(self.net)
            if self.ema is not None:
                self.ema.start_from_weights()
            return recorded, None, meta
        params = read_training_checkpoint(resume) if params is None else params
        meta = load_training_checkpoint(resume, self.net, self.optimizer, params)
        if self.ema is not None and not load_ema_weights(params, self.ema_net):
            self.ema.start_from_weights()
            self.ema_restarted = True
        self.start_epoch, self.start_step = int(meta.get(LAST_META, 0)), int(meta.get(STEP_META, 0))
        self.best_top1 = float(meta.get(BEST_TOP1_META, -1.0))
        saved_accumulation = int(meta.get(ACCUMULATION_META, 1))
        if self.start_step and saved_accumulation != self.accumulation:
            raise ResumeError(f'{resume} was saved after step {self.start_step} of an epoch with accumulation_steps '
                              f'{saved_accumulation}, but accumulation_steps is now {self.accumulation}; resume '
                              'from an epoch checkpoint, or with the same accumulation_steps')
        if self.start_step > self.steps_per_epoch:
            raise ResumeError(f'{resume} was saved after step {self.start_step} of an epoch, but an epoch now has '
                              f'{self.steps_per_epoch} steps (batch_size, accumulation_steps or device count '
                              'changed); resume from an epoch checkpoint')
        # The optimizer's global_step picks the learning rate: this run's schedule at the saved position.
        # The checkpoint's own count is that of the run that saved it, whose epochs may have had
        # another number of steps (or, saved by an earlier version, counted only the applied updates).
        step = self.optimizer.global_step
        step.set_data(ms.Tensor(np.full(step.shape, self.start_epoch * self.steps_per_epoch + self.start_step),
                                step.dtype))
        if self.start_step:
            self.resumed_losses = [float(v) for v in np.atleast_1d(meta[EPOCH_LOSSES_META])]
            self.resumed_skipped = int(meta[EPOCH_SKIPPED_META])
        if self.loss_scaler is not None:
            self.skipped_in_a_row = restore_loss_scaler(self.loss_scaler, meta)
        self.history = [r for r in recorded if r['epoch'] <= self.start_epoch]
        return recorded, resume, meta

    def _announce_start(self, on_start, recorded, resume, meta):
        """The first writes of the run: train.log, on_start, the log lines that say where it starts;
        and, resumed from an older checkpoint than the newest, the removal of the later ones."""
        cfg, log = self.cfg, self.log
        if self.rank == 0:
            log_to_file(log, cfg.output_dir)
        if self.writes and on_start is not None:
            on_start()
        if len(self.writers) > 1:
            log.info('ranks %s write checkpoints, each in its server\'s output_dir: not every server shares it',
                     ', '.join(map(str, self.writers)))
        if resume:
            replaced = [r['epoch'] for r in recorded if r['epoch'] > self.start_epoch + 1]
            if replaced:
                log.warning('metrics.json records epochs up to %d; this run retrains epochs %d-%d and replaces them',
                            replaced[-1], self.start_epoch + 1, replaced[-1])
            first = min(self.start_epoch * self.steps_per_epoch + self.start_step, len(self.lrs) - 1)
            log.info('resumed from %s: %d epochs done, continuing after %s, lr %.6g', resume, self.start_epoch,
                     describe_position((self.start_epoch, self.start_step)), float(self.lrs[first]))
            if self.ema_restarted:
                log.warning('%s has no EMA weights (saved without ema): the average starts at its weights', resume)
            saved_steps = int(meta.get(STEPS_PER_EPOCH_META, self.steps_per_epoch))
            if saved_steps != self.steps_per_epoch:
                log.warning('%s was saved by a run of %d steps an epoch, this one has %d (batch_size, '
                            'accumulation_steps or device count changed): the learning-rate schedule is this '
                            "run's, continued after %s", resume, saved_steps, self.steps_per_epoch,
                            describe_position((self.start_epoch, self.start_step)))
            if self.loss_scaler is not None:
                log.info('loss scale %g (%s)', self._loss_scale(),
                         'from the checkpoint' if LOSS_SCALE_META in meta else 'loss_scale; the checkpoint has none')
        log.info('%s: %.2fM parameters, global batch %d (%d device(s) x batch %d x accumulation %d), %d steps/epoch, '
                 'peak lr %.4g, %s, amp %s%s', cfg.arch, self.n_params / 1e6, self.global_batch, self.group_size,
                 cfg.batch_size, self.accumulation, self.steps_per_epoch, self.peak_lr, cfg.optimizer, cfg.amp_level,
                 f', EMA decay {cfg.ema_decay:g}' if self.ema is not None else '')
        if self.writes:
            # The later checkpoints belong to the run being replaced. Kept, keep_checkpoint_max would
            # count them and --resume auto prefer them.
            for position, path in training_checkpoints(self.ckpt_dir):
                if position > (self.start_epoch, self.start_step):
                    os.remove(path)
                    log.info('removed %s: it is past where this run starts', path)

    def _train_epoch(self, epoch, stop):
        """Trains one epoch (from the resumed step in the first one); returns its metric record.
        Raises TrainingStopped after saving a step checkpoint when a stop was requested.

        The step's outputs stay on the device until a log point, a stop check that stops or the
        epoch's end: reading them waits for the device, which would otherwise idle on the host every
        step. A non-finite loss or a run of skipped steps is found there, at most log_interval steps
        late, and reported with the step where it happened."""
        cfg, spe, n = self.cfg, self.steps_per_epoch, self.accumulation
        self.net.set_train(True)
        first_step = self.start_step if epoch == self.start_epoch else 0
        epoch_start = time.time()
        state = EpochState(list(self.resumed_losses) if first_step else [], self.resumed_skipped if first_step else 0,
                           self._loss_scale())
        # Only whole updates: take() leaves out the epoch's last batches that do not fill one.
        data = self.train_data(epoch).take(spe * n)
        if first_step:
            # Skipped batches are still read and augmented: the rest of the epoch sees the random
            # state an uninterrupted run would.
            data = data.skip(first_step * n)
        i = first_step
        pending = []  # (step, (loss, overflow, loss scale) Tensors) not read yet
        for i, batches in enumerate(updates(data.create_tuple_iterator(num_epochs=1), n), first_step + 1):
            pending.append((i, self.step_fn(batches)))
            self.run_steps += 1
            at_log_point = i % cfg.log_interval == 0 or i == spe
            if at_log_point:
                self._read_steps(epoch, pending, state)
                self._log_progress(epoch, i, epoch * spe + i, state)
            # Also after the epoch's last step: validation may outlast a scheduler's grace period.
            if stop.stop_now(at_log_point):
                self._read_steps(epoch, pending, state)
                if self.writes:
                    self.last_saved.path = self._save(
                        step_checkpoint_path(self.ckpt_dir, epoch + 1, i),
                        {LAST_META: epoch, STEP_META: i, EPOCH_SKIPPED_META: state.skipped,
                         EPOCH_LOSSES_META: ms.Tensor(np.array(state.losses, np.float64))})
                raise self._stopped(stop, f'epoch {epoch + 1}, step {i} of {spe}')
        self._read_steps(epoch, pending, state)
        if i == 0:
            raise DataError(f'no batch of training images could be read in epoch {epoch + 1}')
        if i < spe:
            self.log.warning('epoch %d ran %d of %d steps: unreadable training images were skipped '
                             '(GLOG_v=2 makes MindSpore name each)', epoch + 1, i, spe)
        record = {'epoch': epoch + 1, 'train_loss': float(np.mean(state.losses)),
                  'lr': float(self.lrs[epoch * spe + i - 1]), 'global_batch': self.global_batch,
                  'epoch_time_s': round(time.time() - epoch_start, 2)}
        if self.loss_scaler is not None:
            record.update(loss_scale=state.loss_scale, skipped_steps=state.skipped)
        return record

    def _read_steps(self, epoch, pending, state):
        """Reads the pending steps' outputs into `state` (emptying `pending`), in step order:
        TrainingError at the first non-finite loss (without loss scaling) or the max_skipped_steps-th
        skipped step in a row."""
        for i, outputs in pending:
            loss, overflow, state.loss_scale = (out.asnumpy().item() for out in outputs)
            where = f'epoch {epoch + 1}, step {i} (global step {epoch * self.steps_per_epoch + i})'
            if not math.isfinite(loss) and self.loss_scaler is None:
                raise TrainingError(f'loss is {loss} at {where}; last good checkpoint: {self.last_saved}. '
                                    'Lower the lr or enable clip_grad.')
            if overflow:
                state.skipped += 1
                self._count_skipped_step(where, state.loss_scale)
            else:
                self.skipped_in_a_row = 0
            state.losses.append(loss)
        pending.clear()

    def _count_skipped_step(self, where, loss_scale):
        self.run_skipped += 1
        self.skipped_in_a_row += 1
        if self.skipped_in_a_row >= self.cfg.max_skipped_steps:
            raise TrainingError(
                f'{self.skipped_in_a_row} steps in a row skipped for gradient overflow, the last at {where}; loss '
                f'scale now {loss_scale:g}; last good checkpoint: {self.last_saved}. Lower the lr or the '
                'loss_scale, enable clip_grad or train at amp_level O0; on Ascend in saturation mode, +-inf '
                'anywhere in the forward pass sets the overflow flag.')

    def _log_progress(self, epoch, i, global_step, state):
        cfg = self.cfg
        elapsed = time.time() - self.run_start
        rate = self.run_steps * self.global_batch / elapsed
        eta = (cfg.epochs * self.steps_per_epoch - global_step) * elapsed / self.run_steps
        scaling = ('' if self.loss_scaler is None
                   else f' loss scale {state.loss_scale:g} (skipped {state.skipped} of {i} steps)')
        self.log.info('epoch %d/%d step %d/%d loss %.4f lr %.6g%s %.1f img/s ETA %s', epoch + 1, cfg.epochs, i,
                      self.steps_per_epoch, np.mean(state.losses[-cfg.log_interval:]),
                      float(self.lrs[global_step - 1]), scaling, rate, format_duration(eta))

    def _validate(self, epoch, n_val_images):
        """Validation of the weights and, with ema, of their average (recorded as ema_val_*). Each
        rank evaluates its shard of the validation set and the counts are summed over the ranks."""
        record = {}
        # No collective runs between batches, so the shards may lose different numbers of unreadable
        # images: skip them here rather than replace them (a replacement would be counted twice).
        set_bad_image_policy(self.cfg.bad_images)
        for prefix, net in (('', self.net), ('ema_', self.ema_net)):
            if net is None:
                continue
            val = evaluate(net, build_dataset(self.cfg, 'val', self.rank, self.group_size,
                                              class_indexing=self.class_indexing),
                           jit_level=self.cfg.jit_level, sum_over_ranks=self.group_size > 1)
            unreadable = n_val_images - val['count']
            self.log.info('epoch %d %sval top-1 %.4f top-5 %.4f loss %.4f (%d images%s)', epoch + 1,
                          'EMA ' if prefix else '', val['top1'], val['top5'], val['loss'], val['count'],
                          f', {unreadable} unreadable left out' if unreadable > 0 else '')
            record.update({f'{prefix}val_top1': val['top1'], f'{prefix}val_top5': val['top5'],
                           f'{prefix}val_loss': val['loss']})
        set_bad_image_policy(self.cfg.bad_images, distributed=self.group_size > 1)
        return record

    def _save(self, path, meta_extra, with_optimizer=True):
        meta = {BEST_TOP1_META: self.best_top1, ACCUMULATION_META: self.accumulation,
                STEPS_PER_EPOCH_META: self.steps_per_epoch, **meta_extra}
        if self.loss_scaler is not None:
            meta.update(loss_scaler_meta(self.loss_scaler, self.skipped_in_a_row))
        return save_training_checkpoint(path, self.net, self.optimizer if with_optimizer else None, meta,
                                        self.ema_net)

    def _save_epoch(self, epoch, record):
        """The end of an epoch: best top-1; on the writing ranks metrics.json, the epoch checkpoint,
        best.ckpt and the removal of checkpoints no longer needed."""
        new_best = record.get('val_top1', -1.0) > self.best_top1
        self.best_top1 = max(self.best_top1, record.get('val_top1', -1.0))
        if not self.writes:
            return
        ckpt_dir = self.ckpt_dir
        # Metrics first: a kill between the two writes leaves metrics one epoch ahead of the
        # checkpoints, which resume trims, never behind.
        write_text(self.metrics_path, json.dumps(self.history, indent=1))
        self.last_saved.path = self._save(epoch_checkpoint_path(ckpt_dir, epoch + 1), {LAST_META: epoch + 1})
        if new_best:
            best = self._save(best_checkpoint_path(ckpt_dir), {LAST_META: epoch + 1}, with_optimizer=False)
            self.log.info('new best top-1 %.4f -> %s', self.best_top1, best)
        for _, old in epoch_checkpoints(ckpt_dir)[:-self.cfg.keep_checkpoint_max]:
            os.remove(old)
        for passed in step_checkpoints(ckpt_dir):  # all inside epochs now done
            os.remove(passed)

    def _stopped(self, stop, where):
        if self.rank == 0:
            self.log.info('stopped by %s at %s; checkpoint %s. Run the same command with --resume auto to continue.',
                          stop.reason, where, self.last_saved)
        else:
            self.log.warning('rank %d stopped by %s at %s%s', self.rank, stop.reason, where,
                             f'; checkpoint {self.last_saved}' if self.writes else '')
        return TrainingStopped(stop.reason, where, self.last_saved.path, self.history)


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

