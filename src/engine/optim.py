"""Learning-rate schedules and optimizers of the official recipes, and their factories."""
import math

import mindspore as ms
import numpy as np
from mindspore import Tensor, nn, ops


def scaled_lr(base_lr, global_batch, lr_base_batch):
    """Linear scaling rule: base_lr is for lr_base_batch images per step."""
    return base_lr * global_batch / lr_base_batch


def timm_cosine_lr(peak_lr, steps_per_epoch, epochs, warmup_epochs=0, warmup_lr=0.0, min_lr=0.0):
    """Per-step learning rates (float32 array of epochs * steps_per_epoch) of the official Swin recipe:
    timm 0.3.2's CosineLRScheduler(t_initial=T, lr_min=min_lr, warmup_lr_init=warmup_lr, warmup_t=W,
    cycle_limit=1, t_in_epochs=False) with T and W the int() of epochs and warm-up epochs in steps.
    Its value at t is warmup_lr + t (peak_lr - warmup_lr) / W during the warm-up, then
    min_lr + (peak_lr - min_lr) (1 + cos(pi t / T)) / 2 with t counted from step 0, not from the end of
    the warm-up (warmup_prefix=False). The scheduler starts at warmup_lr and the official loop calls
    step_update(t) after the update of step t: step 0 runs at warmup_lr and step t > 0 at the value of
    t - 1."""
    total = int(epochs * steps_per_epoch)
    warmup = int(warmup_epochs * steps_per_epoch)

    def value(t):
        if t < warmup:
            return warmup_lr + t * ((peak_lr - warmup_lr) / warmup)
        return min_lr + 0.5 * (peak_lr - min_lr) * (1 + math.cos(math.pi * t / total))

    first = warmup_lr if warmup else peak_lr  # timm sets warmup_lr_init only when there is a warm-up
    return np.array([first] + [value(t - 1) for t in range(1, total)], np.float32)


def resnet_cosine_lr(peak_lr, steps_per_epoch, epochs, warmup_epochs=5):
    """Per-step learning rates of the official ACmix ResNet recipe (ResNet/main.py,
    adjust_learning_rate_iter_warmup with the cosine schedule), set before each step: during the
    warm-up peak_lr / 4 + 3/4 peak_lr (1 + t) / (W L), then peak_lr (1 + cos(pi (t - W L) / ((E - W) L))) / 2,
    t the step, L the steps per epoch, W and E the warm-up and total epochs."""
    total, warmup = epochs * steps_per_epoch, int(warmup_epochs * steps_per_epoch)
    lrs = [peak_lr / 4 + 3 * peak_lr / 4 * float(1 + t) / warmup if t < warmup else
           0.5 * peak_lr * (1 + math.cos(math.pi * float(t - warmup) / float(total - warmup)))
           for t in range(total)]
    return np.array(lrs, np.float32)


LR_SCHEDULES = ('timm_cosine', 'resnet_cosine')


def build_lr_schedule(cfg, global_batch, steps_per_epoch):
    """The per-step learning rates of cfg.lr_schedule. lr, warmup_lr and min_lr are given for
    lr_base_batch images and scaled linearly with the global batch, as the official Swin code scales
    all three."""
    def scaled(value):
        return scaled_lr(value, global_batch, cfg.lr_base_batch)
    if cfg.lr_schedule == 'timm_cosine':
        return timm_cosine_lr(scaled(cfg.lr), steps_per_epoch, cfg.epochs, cfg.warmup_epochs, scaled(cfg.warmup_lr),
                              scaled(cfg.min_lr))
    if cfg.lr_schedule == 'resnet_cosine':
        return resnet_cosine_lr(scaled(cfg.lr), steps_per_epoch, cfg.epochs, cfg.warmup_epochs)
    raise ValueError(f'lr_schedule must be one of {", ".join(LR_SCHEDULES)}, got {cfg.lr_schedule!r}')


def split_decay_params(net, no_decay_1d):
    """(decay, no_decay) trainable parameters. With no_decay_1d, biases, norm affine parameters,
    ACmix rates (all 1-D) and relative-position bias tables get no weight decay (as Swin does)."""
    decay, no_decay = [], []
    for p in net.trainable_params():
        if no_decay_1d and (p.ndim <= 1 or p.name.endswith('relative_position_bias_table')):
            no_decay.append(p)
        else:
            decay.append(p)
    return decay, no_decay


_adamw_update = ops.MultitypeFuncGraph('adamw_update')


@_adamw_update.register('Tensor', 'Tensor', 'Tensor', 'Tensor', 'Tensor', 'Tensor', 'Tensor', 'Tensor', 'Tensor',
                        'Tensor', 'Tensor', 'Bool')
def _adamw_update_one(beta1, beta2, eps, bias_correction1, bias_correction2_sqrt, lr, weight_decay, param, m, v,
                      gradient, decay):
    """torch.optim.AdamW's update of one parameter, in float32."""
    param32, gradient = param.astype(ms.float32), gradient.astype(ms.float32)
    if decay:
        param32 = param32 * (1.0 - lr * weight_decay)
    next_m = beta1 * m + (1.0 - beta1) * gradient
    next_v = beta2 * v + (1.0 - beta2) * ops.square(gradient)
    denominator = ops.sqrt(next_v) / bias_correction2_sqrt + eps
    param32 = param32 - (lr / bias_correction1) * ops.div(next_m, denominator)
    ops.assign(m, next_m)
    ops.assign(v, next_v)
    return ops.assign(param, param32.astype(param.dtype))


class AdamW(nn.Optimizer):
    """AdamW as torch.optim.AdamW computes it (the official Swin optimizer): decoupled weight decay
    param *= 1 - lr * wd, then Adam with bias correction, param -= lr / (1 - beta1^t) * m /
    (sqrt(v) / sqrt(1 - beta2^t) + eps), t the number of updates so far (this one included). MindSpore's
    nn.AdamWeightDecay has no bias correction: its early updates are larger, by 3.2x at the first.
    t counts the updates applied (adam_step), as torch's per-parameter step does; global_step, which
    picks the learning rate, counts the training steps, skipped ones included (make_train_step
    advances it when it skips the update), as the official loop's per-iteration scheduler does. The
    moments are named as nn.AdamWeightDecay's (adam_m., adam_v.), so a training checkpoint of either
    resumes into the other; one without adam_step was saved when global_step counted the applied
    updates, and its global_step is taken for it (SAVED_AS)."""

    UPDATE_COUNT = 'adam_step'
    # {parameter a checkpoint of an earlier version lacks: the saved parameter that held its value}
    SAVED_AS = {UPDATE_COUNT: 'global_step'}

    def __init__(self, params, learning_rate, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0):
        super().__init__(learning_rate, params, weight_decay)
        self.beta1, self.beta2 = Tensor(beta1, ms.float32), Tensor(beta2, ms.float32)
        self.eps = Tensor(eps, ms.float32)
        # beta^t as exp(t log beta): the graph needs no power of a tensor exponent
        self.log_beta1, self.log_beta2 = Tensor(math.log(beta1), ms.float32), Tensor(math.log(beta2), ms.float32)
        self.moments1 = self._parameters.clone(prefix='adam_m', init='zeros')
        self.moments2 = self._parameters.clone(prefix='adam_v', init='zeros')
        self.update_count = ms.Parameter(Tensor([0], ms.int32), name=self.UPDATE_COUNT, requires_grad=False)
        # per parameter: groups give each its group's decay; else one value for all (decay_flags, as
        # nn.Optimizer sets them without groups, leave out the parameters named beta and gamma)
        self.decays = None if self.is_group else (Tensor(weight_decay, ms.float32),) * len(self._parameters)

    def construct(self, gradients):
        weight_decay = self.get_weight_decay()
        lr = self.get_lr()
        # t, this update's number, is read before its counter is advanced, as get_lr reads global_step:
        # a read after the in-place update would copy the parameter (a TensorMove in the graph)
        t = (self.update_count + self.global_step_increase_tensor).astype(ms.float32)
        self.assignadd(self.update_count, self.global_step_increase_tensor)
        self.assignadd(self.global_step, self.global_step_increase_tensor)
        bias_correction1 = 1.0 - ops.exp(t * self.log_beta1)
        bias_correction2_sqrt = ops.sqrt(1.0 - ops.exp(t * self.log_beta2))
        update = ops.partial(_adamw_update, self.beta1, self.beta2, self.eps, bias_correction1, bias_correction2_sqrt)
        if not self.is_group_lr:
            lr = (lr,) * len(self._parameters)
        if not self.is_group:
            weight_decay = self.decays
        return self.hyper_map(update, lr, weight_decay, self._parameters, self.moments1, self.moments2, gradients,
                              self.decay_flags)


def build_optimizer(net, name, lrs, weight_decay, momentum=0.9, no_decay_1d=False):
    """SGD with momentum (torch.optim.SGD's semantics: weight decay added to the gradient before the
    momentum) or AdamW (torch's, see AdamW) over `net`'s trainable parameters with the per-step lrs."""
    decay, no_decay = split_decay_params(net, no_decay_1d)
    groups = [{'params': decay, 'weight_decay': weight_decay}]
    if no_decay:
        groups.append({'params': no_decay, 'weight_decay': 0.0})
    groups.append({'order_params': net.trainable_params()})
    lr = Tensor(lrs)
    if name == 'sgd':
        return nn.Momentum(groups, learning_rate=lr, momentum=momentum)
    if name == 'adamw':
        return AdamW(groups, learning_rate=lr, beta1=0.9, beta2=0.999, eps=1e-8)
    raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {name!r}")
