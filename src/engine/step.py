"""The training step of a config, built in one place: the trainer, the graph audit (our proof of
what the Ascend and GPU graphs contain) and the benchmark all call `build_training_step`, so the graph
the audit checks and the one the benchmark times are wired as the trainer's is."""
from dataclasses import dataclass

import mindspore as ms
from mindspore import nn

from .loss import SoftTargetCrossEntropy
from .optim import build_optimizer
from .train_step import EMA_PREFIX, WeightEMA, make_train_step


@dataclass
class TrainingStep:
    """What build_training_step made: `step` (see make_train_step) and the objects a training loop
    saves and restores. net and ema_net are the mixed-precision wrappers when amp_level is not O0."""
    step: object
    net: nn.Cell
    optimizer: nn.Optimizer
    loss_scaler: object = None
    ema_net: nn.Cell = None
    ema: WeightEMA = None
    grad_reducer: nn.Cell = None


def build_training_step(cfg, net, lrs, group_size=1, ema_net=None):
    """The training step of `cfg` for `net` (in training mode or not; the caller sets it): the
    optimizer of the recipe (cfg.optimizer, weight_decay, momentum, no_decay_1d) over the per-step
    learning rates `lrs`; the weight EMA into `ema_net` (a second instance of the model, required
    when cfg.ema is set, whose parameters are renamed here); mixed precision cfg.amp_level with dynamic
    loss scaling from cfg.loss_scale; clipping at cfg.clip_grad; cfg.accumulation_steps micro-batches
    per update; the gradient all-reduce over `group_size` ranks when cfg.data_parallel; the loss
    SoftTargetCrossEntropy; cfg.jit_level."""
    optimizer = build_optimizer(net, cfg.optimizer, lrs, cfg.weight_decay, cfg.momentum, cfg.no_decay_1d)
    ema = None
    if cfg.ema:
        if ema_net is None:
            raise ValueError('cfg.ema is set: build_training_step needs ema_net, a second instance of the model')
        ema_net.update_parameters_name(EMA_PREFIX)
        ema = WeightEMA(net, ema_net, cfg.ema_decay)
    loss_scaler = None
    if cfg.amp_level != 'O0':
        net = ms.amp.auto_mixed_precision(net, cfg.amp_level)
        if ema is not None:
            ema_net = ms.amp.auto_mixed_precision(ema_net, cfg.amp_level)
        loss_scaler = ms.amp.DynamicLossScaler(scale_value=cfg.loss_scale, scale_factor=2, scale_window=1000)
    grad_reducer = None
    if group_size > 1 and cfg.data_parallel:
        grad_reducer = nn.DistributedGradReducer(optimizer.parameters, mean=True, degree=group_size)
    step = make_train_step(net, SoftTargetCrossEntropy(), optimizer, loss_scaler, cfg.clip_grad, grad_reducer,
                           cfg.jit_level, cfg.accumulation_steps, ema)
    return TrainingStep(step, net, optimizer, loss_scaler, ema_net if ema is not None else None, ema, grad_reducer)
