"""The official recipes' optimisation, step by step: the learning rate of every step against the
official schedulers (timm 0.3.2's own CosineLRScheduler for Swin, the ResNet script's formula), the
label smoothing of each recipe, and training trajectories against PyTorch: a mini model converted from
the official formulation, K steps on fixed batches (no augmentation) through our optimizer, schedule,
clipping and loss, and the same steps with torch.optim.AdamW / SGD, the official schedule and loss: the
weights must agree to fp32 rounding after K steps, for both recipes.

timm 0.3.2 is the version the official Swin code used (imported as official_code.py says).
"""
import math
import os

import numpy as np
import pytest
from mindspore import Tensor

import official_code
from src.config import load_config
from src.data.mixup import smooth_one_hot
from src.engine.loss import SoftTargetCrossEntropy
from src.engine.optim import build_lr_schedule, build_optimizer, resnet_cosine_lr, timm_cosine_lr
from src.engine.train_step import make_train_step

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _timm_cosine_scheduler():
    """timm 0.3.2's CosineLRScheduler."""
    return official_code.timm_file('scheduler', 'cosine_lr').CosineLRScheduler


def _official_swin_lrs(peak_lr, steps_per_epoch, epochs, warmup_epochs, warmup_lr, min_lr):
    """The lr of each step as the official Swin main.py sees it: the scheduler built as its
    lr_scheduler.py builds it, step_update(epoch * num_steps + idx) after each optimizer step."""
    import torch
    scheduler_class = _timm_cosine_scheduler()
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=peak_lr)
    total, warmup = int(epochs * steps_per_epoch), int(warmup_epochs * steps_per_epoch)
    scheduler = scheduler_class(optimizer, t_initial=total, t_mul=1.0, lr_min=min_lr, warmup_lr_init=warmup_lr,
                                warmup_t=warmup, cycle_limit=1, t_in_epochs=False)
    lrs = []
    for step in range(total):
        lrs.append(optimizer.param_groups[0]['lr'])
        scheduler.step_update(step)
    return np.array(lrs, np.float32)


@pytest.mark.parametrize('steps_per_epoch,epochs,warmup_epochs', [(10, 30, 2), (7, 5, 0), (1251, 3, 1)])
def test_timm_cosine_is_the_official_swin_schedule_at_every_step(steps_per_epoch, epochs, warmup_epochs):
    args = (1e-3, steps_per_epoch, epochs, warmup_epochs, 1e-6, 1e-5)
    np.testing.assert_array_equal(timm_cosine_lr(*args), _official_swin_lrs(*args))


def test_resnet_cosine_is_the_official_resnet_schedule_at_every_step():
    """ResNet/main.py's adjust_learning_rate_iter_warmup (cosine), set before each step, written out."""
    lr, steps, epochs = 0.1, 13, 9
    want = []
    for epoch in range(epochs):
        for step in range(steps):
            if epoch < 5:
                want.append(lr / 4 + 3 * lr / 4 * float(1 + step + epoch * steps) / (5. * steps))
            else:
                want.append(0.5 * lr * (1 + math.cos(math.pi * float((epoch - 5) * steps + step)
                                                     / float((epochs - 5) * steps))))
    np.testing.assert_array_equal(resnet_cosine_lr(lr, steps, epochs, 5), np.array(want, np.float32))


def test_the_swin_configs_scale_warmup_and_minimum_lr_with_the_batch():
    """main.py scales BASE_LR, WARMUP_LR and MIN_LR alike by the total batch / 512: at 8 x 128, 1e-3,
    1e-6 and 1e-5."""
    cfg = load_config(os.path.join(ROOT, 'config', 'acmix_swin_tiny.yaml'), {})
    assert cfg.lr_schedule == 'timm_cosine'
    lrs = build_lr_schedule(cfg, global_batch=8 * 128, steps_per_epoch=1251)
    np.testing.assert_array_equal(lrs, _official_swin_lrs(1e-3, 1251, 300, 20, 1e-6, 1e-5))
    resnet = load_config(os.path.join(ROOT, 'config', 'acmix_resnet50.yaml'), {})
    assert (resnet.lr_schedule, resnet.label_smoothing_over, resnet.lr / resnet.lr_base_batch) == \
        ('resnet_cosine', 'others', 0.1 / 128)


def test_label_smoothing_of_each_recipe():
    labels, classes, eps = np.array([2, 0]), 5, 0.1
    swin = smooth_one_hot(labels, classes, eps, 'all')  # timm: off = eps / C, on = 1 - eps + off
    np.testing.assert_allclose(swin[0], [0.02, 0.02, 0.92, 0.02, 0.02], rtol=1e-6)
    resnet = smooth_one_hot(labels, classes, eps, 'others')  # ResNet/main.py smooth_loss
    np.testing.assert_allclose(resnet[1], [0.9, 0.025, 0.025, 0.025, 0.025], rtol=1e-6)
    assert np.allclose(swin.sum(1), 1) and np.allclose(resnet.sum(1), 1)


# ----------------------------------------------------------------------------- trajectories
def _convert(tmodel, arch, **overrides):
    from src.models import create_model
    from src.models.weights import convert_state_dict, load_checkpoint_strict
    net = create_model(arch, num_classes=5, **overrides)
    state_dict = {k: v.detach().numpy() for k, v in tmodel.state_dict().items()}
    load_checkpoint_strict(net, convert_state_dict(state_dict, net))
    return net


def _assert_same_weights(net, tmodel, rtol, atol):
    from src.models.weights import map_key
    names = {p.name: p for p in net.get_parameters()}
    compared = 0
    for key, value in tmodel.state_dict().items():
        name = map_key(key, names)
        if name is None:
            continue
        np.testing.assert_allclose(names[name].asnumpy(), value.detach().numpy(), rtol=rtol, atol=atol, err_msg=key)
        compared += 1
    assert compared == len(names)


def _batches(size, k, seed):
    rng = np.random.default_rng(seed)
    return [(rng.normal(size=(4, 3, size, size)).astype(np.float32), rng.integers(0, 5, 4)) for _ in range(k)]


@pytest.mark.slow
def test_the_swin_recipe_trains_as_the_official_code():
    """AdamW (torch's), the timm schedule with warm-up and cosine, clipping at 5 and label smoothing
    0.1: acmix_swin_mini and the official formulation, 8 steps."""
    import torch

    from src.tools import official_reference as tref
    torch.manual_seed(0)
    tmodel = tref.swin(True, num_classes=5, img_size=32, patch_size=2, embed_dim=32, depths=(2, 2, 2, 2),
                       num_heads=(1, 2, 4, 8), window_size=4).train()
    net = _convert(tmodel, 'acmix_swin_mini', drop_path_rate=0.0)
    net.set_train(True)
    batches, k = _batches(32, 8, seed=1), 8
    lrs = timm_cosine_lr(1e-3, 2, 4, 1, 1e-5, 1e-4)
    # ours: the trainer's factories
    optimizer = build_optimizer(net, 'adamw', lrs, 0.05, no_decay_1d=True)
    step = make_train_step(net, SoftTargetCrossEntropy(), optimizer, clip_grad=5.0)
    for images, labels in batches:
        step([(Tensor(images), Tensor(smooth_one_hot(labels, 5, 0.1, 'all')))])
    # official: optimizer.py's groups (no decay for 1-D, .bias and the bias tables), main.py's loop
    decay = [p for n, p in tmodel.named_parameters() if p.ndim > 1 and not n.endswith('relative_position_bias_table')]
    no_decay = [p for n, p in tmodel.named_parameters() if p.ndim <= 1 or n.endswith('relative_position_bias_table')]
    topt = torch.optim.AdamW([{'params': decay}, {'params': no_decay, 'weight_decay': 0.0}], lr=1e-3,
                             betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05)
    scheduler = _timm_cosine_scheduler()(topt, t_initial=8, lr_min=1e-4, warmup_lr_init=1e-5, warmup_t=2,
                                         cycle_limit=1, t_in_epochs=False)
    for index, (images, labels) in enumerate(batches[:k]):
        targets = torch.tensor(smooth_one_hot(labels, 5, 0.1, 'all'))
        loss = (-targets * torch.log_softmax(tmodel(torch.tensor(images)), dim=-1)).sum(-1).mean()
        topt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(tmodel.parameters(), 5.0)
        topt.step()
        scheduler.step_update(index)
    _assert_same_weights(net, tmodel, rtol=1e-4, atol=2e-5)


@pytest.mark.slow
def test_the_resnet_recipe_trains_as_the_official_code():
    """SGD with momentum 0.9 and weight decay 1e-4 on every parameter, the ResNet schedule from
    lr / 4, label smoothing over the other classes: acmix_resnet_mini with the ImageNet stem and the
    official formulation, 6 steps with BatchNorm in training mode."""
    import torch

    from src.tools import official_reference as tref
    torch.manual_seed(0)
    tmodel = tref.acmix_resnet([1, 1, 1, 1], num_classes=5, base_channels=16).train()
    net = _convert(tmodel, 'acmix_resnet_mini', stem='imagenet')
    net.set_train(True)
    batches = _batches(128, 6, seed=2)
    # At the recipe's lr of 0.1 this tiny network on random images is chaotic: torch against torch with
    # the weights perturbed by 1e-7 after one step differs by 3e-4 after the next. At 0.001 it is not.
    lrs = resnet_cosine_lr(0.001, 2, 3, 1)
    optimizer = build_optimizer(net, 'sgd', lrs, 1e-4, momentum=0.9)
    step = make_train_step(net, SoftTargetCrossEntropy(), optimizer)
    for images, labels in batches:
        step([(Tensor(images), Tensor(smooth_one_hot(labels, 5, 0.1, 'others')))])
    topt = torch.optim.SGD(tmodel.parameters(), 0.001, momentum=0.9, weight_decay=1e-4)
    for index, (images, labels) in enumerate(batches):
        for group in topt.param_groups:
            group['lr'] = float(lrs[index])  # the official function's value, tested above
        out = tmodel(torch.tensor(images))
        w = torch.nn.functional.one_hot(torch.tensor(labels), 5).float()
        w = w * (1 - 0.1) + (1 - w) * 0.1 / (out.shape[1] - 1)
        loss = (-w * torch.log_softmax(out, dim=1)).sum(dim=1).mean()
        topt.zero_grad()
        loss.backward()
        topt.step()
    _assert_same_weights(net, tmodel, rtol=1e-4, atol=2e-5)


def test_a_training_checkpoint_of_the_earlier_adamw_resumes_into_torchs(tmp_path):
    """Checkpoints written while AdamW was nn.AdamWeightDecay hold its moments (adam_m., adam_v.) and
    step: they resume into the AdamW of the recipe, every moment and the step restored, the count of
    applied updates (adam_step, which they lack) from their step, which counted only those."""
    from mindspore import nn

    from src.engine.checkpoint import load_training_checkpoint, optimizer_state, save_training_checkpoint
    from src.engine.optim import split_decay_params
    from src.models import create_model
    net = create_model('acmix_swin_mini', num_classes=5)
    decay, no_decay = split_decay_params(net, True)
    groups = [{'params': decay, 'weight_decay': 0.05}, {'params': no_decay, 'weight_decay': 0.0}]
    earlier = nn.AdamWeightDecay(groups, learning_rate=Tensor(np.full(4, 1e-3, np.float32)))
    rng = np.random.default_rng(0)
    for p in optimizer_state(net, earlier):
        if p.name == 'global_step':
            p.set_data(Tensor(np.full(p.shape, 7, np.int32)))
        else:
            p.set_data(Tensor(rng.normal(size=p.shape).astype(np.float32)))
    path = str(tmp_path / 'earlier.ckpt')
    save_training_checkpoint(path, net, earlier, meta={'epoch': 1})
    optimizer = build_optimizer(net, 'adamw', np.full(4, 1e-3, np.float32), 0.05, no_decay_1d=True)
    assert load_training_checkpoint(path, net, optimizer)['epoch'] == 1
    restored = {p.name: p.asnumpy() for p in optimizer_state(net, optimizer)}
    saved = {p.name: p.asnumpy() for p in optimizer_state(net, earlier)}
    assert sorted(restored) == sorted([*saved, 'adam_step']) and any(name.startswith('adam_v.') for name in saved)
    assert restored['global_step'].ravel().tolist() == restored['adam_step'].ravel().tolist() == [7]
    for name, value in saved.items():
        np.testing.assert_array_equal(restored[name], value, err_msg=name)
