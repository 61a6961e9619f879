"""Learning-rate schedule and optimizer factories."""
import math

import numpy as np
from mindspore import Tensor, nn


def scaled_lr(base_lr, global_batch, lr_base_batch):
    """Linear scaling rule: base_lr is for lr_base_batch images per step."""
    return base_lr * global_batch / lr_base_batch


def warmup_cosine_lr(peak_lr, steps_per_epoch, epochs, warmup_epochs=0, warmup_lr=0.0, min_lr=0.0):
    """Per-step learning rates (float32 array of epochs * steps_per_epoch): linear warm-up from
    warmup_lr to peak_lr, then a cosine decay to min_lr; updated every step."""
    total = epochs * steps_per_epoch
    warmup = int(warmup_epochs * steps_per_epoch)
    lrs = np.empty(total, np.float64)
    for step in range(total):
        if step < warmup:
            lrs[step] = warmup_lr + (peak_lr - warmup_lr) * step / warmup
        else:
            progress = (step - warmup) / max(1, total - warmup)
            lrs[step] = min_lr + 0.5 * (peak_lr - min_lr) * (1.0 + math.cos(math.pi * progress))
    return lrs.astype(np.float32)


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


def build_optimizer(net, name, lrs, weight_decay, momentum=0.9, no_decay_1d=False):
    """SGD with momentum or AdamW over `net`'s trainable parameters with the per-step lrs.

    AdamW is nn.AdamWeightDecay (decoupled weight decay, like torch's AdamW, but without Adam's
    bias correction; under a warm-up the difference fades within the first epochs).
    """
    decay, no_decay = split_decay_params(net, no_decay_1d)
    groups = [{'params': decay, 'weight_decay': weight_decay}]
    if no_decay:
        groups.append({'params': no_decay, 'weight_decay': 0.0})
    groups.append({'order_params': net.trainable_params()})
    lr = Tensor(lrs)
    if name == 'sgd':
        return nn.Momentum(groups, learning_rate=lr, momentum=momentum)
    if name == 'adamw':
        return nn.AdamWeightDecay(groups, learning_rate=lr, beta1=0.9, beta2=0.999, eps=1e-8)
    raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {name!r}")
