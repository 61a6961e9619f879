"""Registry, exact parameter counts, input-size rules, and a forward plus one training step of
every registered model on small inputs, as a classifier and as a features_only backbone."""
import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, nn, ops
from mindspore.nn.utils import no_init_parameters

from src.models import InputSizeError, UnknownModelError, create_model, list_models, size_overrides
from src.models.swin import stage_resolutions

OFFICIAL_COUNTS = {
    'acmix_resnet26': 10_487_816,
    'acmix_resnet38': 14_410_896,
    'acmix_resnet50': 18_333_976,
    'acmix_swin_tiny': 28_649_908,
    'acmix_swin_small': 50_345_080,
    'swin_tiny': 28_288_354,
    # plain baselines: torchvision-style ResNet-50, and Swin-S as in microsoft/Swin-Transformer
    'resnet50': 25_557_032,
    'swin_small': 49_606_258,
}


def n_trainable(arch):
    """Trainable parameters of `arch`, built without initialising its weights (only their shapes count)."""
    with no_init_parameters():
        return sum(p.size for p in create_model(arch).trainable_params())


@pytest.mark.parametrize('arch', sorted(OFFICIAL_COUNTS))
def test_parameter_counts(arch):
    assert n_trainable(arch) == OFFICIAL_COUNTS[arch]


def test_acmix_adds_what_the_paper_says_to_swin_tiny():
    # dep_conv 357,696 + fc 3,834 + rates 24
    assert n_trainable('acmix_swin_tiny') - n_trainable('swin_tiny') == 361_554


def test_registry():
    names = list_models()
    for n in ('acmix_resnet26', 'acmix_resnet38', 'acmix_resnet50', 'acmix_swin_tiny', 'acmix_swin_small',
              'resnet26', 'resnet38', 'resnet50', 'swin_tiny', 'swin_small'):
        assert n in names
    with pytest.raises(UnknownModelError, match='acmix_resnet50'):
        create_model('acmix_resnet5')


def test_fixed_shift_kernels_are_kept_and_frozen():
    net = create_model('acmix_resnet_mini', learnable_shift=False)
    w = net.layer1[0].conv2.dep_conv.weight
    assert not w.requires_grad
    assert np.allclose(w.asnumpy()[0, :, 1, 1], np.eye(9)[4])  # channel 4 is the centre tap


def test_swin_sizes():
    assert stage_resolutions(224, 4, 4) == [(56, 56), (28, 28), (14, 14), (7, 7)]
    assert stage_resolutions(448, 4, 4)[-1] == (14, 14)
    # the patch embedding pads 250 x 330 to 252 x 332; each merging rounds an odd side up
    assert stage_resolutions((250, 330), 4, 4) == [(63, 83), (32, 42), (16, 21), (8, 11)]
    for bad in (0, -8, (224,), (224, 0), 22.5, (True, 224)):
        with pytest.raises(InputSizeError, match='positive int or'):
            stage_resolutions(bad, 4, 4)
    with no_init_parameters():
        assert not create_model('swin_tiny', img_size=224).padded
        assert create_model('swin_tiny', img_size=200).padded  # 50: windows of 7 need padding


# Stochastic depth is off so that every block gets a gradient with a batch of 2.
# Small inputs: the full architectures, with the widths shrunk where the name allows it and the
# input at the smallest size each one takes (ACmix ResNets need >= 4x4 maps in stage 4).
SMALL = {
    'acmix_resnet26': (dict(base_channels=8), 128),
    'acmix_resnet38': (dict(base_channels=8), 128),
    'acmix_resnet50': (dict(base_channels=8), 128),
    'resnet26': (dict(base_channels=8), 64),
    'resnet38': (dict(base_channels=8), 64),
    'resnet50': (dict(base_channels=8), 64),
    'acmix_resnet_mini': ({}, 32),
    'resnet_mini': ({}, 32),
    'acmix_swin_tiny': (dict(img_size=64, window_size=4, embed_dim=24, drop_path_rate=0.0), 64),
    'acmix_swin_small': (dict(img_size=64, window_size=4, embed_dim=24, drop_path_rate=0.0), 64),
    'swin_tiny': (dict(img_size=64, window_size=4, embed_dim=24, drop_path_rate=0.0), 64),
    'swin_small': (dict(img_size=64, window_size=4, embed_dim=24, drop_path_rate=0.0), 64),
    'acmix_swin_mini': (dict(drop_path_rate=0.0), 32),
    'swin_mini': (dict(drop_path_rate=0.0), 32),
}


# The forward and training step, and the backbone, run for the mini models and for the full-width
# plain architectures resnet26 and swin_tiny: what the full architectures add to the mini ones (the
# ImageNet stem and its feature strides, stages of several blocks, Swin's 4-px patches) is the same
# with or without ACmix, and the ACmix layers run in the mini models (and in their layer tests).
# Left out, with what checks them instead: the ACmix twins acmix_resnet26 and acmix_swin_tiny, and
# the deeper variants resnet38/50 and swin_small with their ACmix twins (the same blocks repeated
# more often). Their exact structure is test_parameter_counts; their training graphs at O0 and O2 and
# their inference graph are compiled at full width by the audit of every registered model
# (test_tools_audit_graph.py); and, for the ACmix ones with ACMIX_FULL_PARITY=1, their logits match
# the official code at 224 px.
LEFT_OUT = ('acmix_resnet26', 'acmix_swin_tiny', 'acmix_resnet38', 'acmix_resnet50', 'resnet38', 'resnet50',
            'acmix_swin_small', 'swin_small')
# the full-width architectures are left out of the inner loop (scripts/run_tests.sh --fast), the mini ones stay
RUN = [arch if arch.endswith('_mini') else pytest.param(arch, marks=pytest.mark.slow)
       for arch in sorted(set(SMALL) - set(LEFT_OUT))]


def test_every_registered_model_has_a_small_setting():
    assert sorted(SMALL) == list_models()
    assert set(LEFT_OUT) <= set(SMALL)


def _train_step(params, loss_fn, has_aux=False):
    """A graph-mode SGD step of `params` under loss_fn(*inputs): step(*inputs) -> (loss, {name: gradient});
    with has_aux, loss_fn returns (loss, aux) and step returns ((loss, aux), gradients)."""
    opt = nn.SGD(params, learning_rate=0.01)
    grad_fn = ms.value_and_grad(loss_fn, None, opt.parameters, has_aux=has_aux)

    @ms.jit
    def step(*inputs):
        loss, grads = grad_fn(*inputs)
        opt(grads)
        return loss, grads

    def run(*inputs):
        loss, grads = step(*inputs)
        return loss, {p.name: g.asnumpy() for p, g in zip(opt.parameters, grads)}
    return run


@pytest.mark.parametrize('arch', RUN)
def test_forward_and_training_step(arch):
    overrides, size = SMALL[arch]
    net = create_model(arch, num_classes=5, **overrides)
    x = Tensor(np.random.randn(2, 3, size, size).astype(np.float32))
    y = Tensor(np.array([1, 3], np.int32))
    net.set_train(False)
    out = net(x)
    assert out.shape == (2, 5) and np.isfinite(out.asnumpy()).all()

    net.set_train(True)
    loss_fn = nn.CrossEntropyLoss()

    def forward(x, y):
        return loss_fn(net(x), y)

    step = _train_step(net.trainable_params(), forward)
    before = {p.name: p.asnumpy().copy() for p in net.trainable_params()}
    loss, grads = step(x, y)
    assert np.isfinite(loss.asnumpy())
    assert all(np.isfinite(g).all() for g in grads.values())
    for name in grads:
        if name.endswith(('rate1', 'rate2', 'dep_conv.weight', 'relative_position_bias_table')):
            assert np.abs(grads[name]).sum() > 0, f'no gradient reaches {name}'
    changed = [p.name for p in net.trainable_params() if not np.array_equal(before[p.name], p.asnumpy())]
    assert len(changed) > 0.9 * len(before)


@pytest.mark.parametrize('arch', RUN)
def test_features_only_backbone(arch):
    """NCHW maps of the channels and strides feature_info states, at the small size (through a
    training step of a small head on all four maps) and at a size nothing divides evenly (Swin pads
    its patches, windows and merges; ResNet strides round up)."""
    overrides, size = SMALL[arch]
    for s in (size, size + size // 4 + 1):
        net = create_model(arch, features_only=True, **{**overrides, **size_overrides(arch, s)})
        assert not hasattr(net, 'fc') and not hasattr(net, 'head')
        assert [info['module'] for info in net.feature_info] == (
            [f'layers.{i}' for i in range(4)] if 'swin' in arch else ['layer1', 'layer2', 'layer3', 'layer4'])
        x = Tensor(np.random.randn(2, 3, s, s).astype(np.float32))
        if s == size:  # the maps come out of the training step's graph
            head = nn.Dense(sum(info['num_chs'] for info in net.feature_info), 5)
            net.set_train(True)
            loss_fn = nn.CrossEntropyLoss()

            def loss(x, y):
                maps = net(x)
                pooled = ops.cat([m.mean((2, 3)) for m in maps], 1)
                return loss_fn(head(pooled), y), maps

            step = _train_step(net.trainable_params() + head.trainable_params(), loss, has_aux=True)
            (value, maps), grads = step(x, Tensor(np.array([1, 3], np.int32)))
            assert np.isfinite(value.asnumpy()) and all(np.isfinite(g).all() for g in grads.values())
            first = 'patch_embed.proj.weight' if 'swin' in arch else 'conv1.weight'
            assert np.abs(grads[first]).sum() > 0
        else:
            net.set_train(False)
            maps = net(x)
        assert len(maps) == 4
        for m, info in zip(maps, net.feature_info):
            side = -(-s // info['reduction'])
            assert m.shape == (2, info['num_chs'], side, side), (s, info)
            assert np.isfinite(m.asnumpy()).all()


@pytest.mark.slow
@pytest.mark.parametrize('arch,formulation', [(arch, formulation) for arch in ('swin_mini', 'acmix_swin_mini',
                                                                               'acmix_resnet_mini')
                                              for formulation in ('cpu', 'portable')])
def test_mixed_precision_training_step(arch, formulation):
    """The shipped ImageNet configs train at amp_level O2: parameters the layers use directly (the
    relative position bias table, the proj weights with the rate folded in) stay float32 there."""
    from src.engine.train_step import make_train_step
    overrides, size = SMALL[arch]
    net = create_model(arch, num_classes=5, formulation=formulation, **overrides)
    net = ms.amp.auto_mixed_precision(net, 'O2')
    net.set_train(True)
    opt = nn.SGD(net.trainable_params(), learning_rate=0.01)
    scaler = ms.amp.DynamicLossScaler(scale_value=2.0 ** 10, scale_factor=2, scale_window=1000)
    step = make_train_step(net, nn.CrossEntropyLoss(), opt, scaler)
    x = Tensor(np.random.randn(2, 3, size, size).astype(np.float32))
    loss, overflow, loss_scale = step([(x, Tensor(np.array([1, 3], np.int32)))])
    assert np.isfinite(loss.asnumpy()).all() and not overflow.asnumpy() and loss_scale.asnumpy() == 2.0 ** 10
