"""Parity with the official PyTorch models: a torch re-implementation of the official forward
(src/tools/official_reference.py, same state_dict keys, same unfold/roll formulation) is randomised,
saved as a .pth, converted with src.tools.pth2ckpt and loaded into our networks; outputs must
agree stage by stage and at the logits, in eval mode. Needs torch (skipped without it).

The full-size models at 224 px are checked when ACMIX_FULL_PARITY=1 (a few minutes)."""
import copy
import os

import numpy as np
import pytest

torch = pytest.importorskip('torch')

import mindspore as ms  # noqa: E402
from mindspore import Tensor  # noqa: E402

from src.layers import LocalAttentionACmix  # noqa: E402
from src.models import create_model, weights  # noqa: E402
from src.models.weights import load_checkpoint_strict  # noqa: E402
from src.tools import official_reference as tref  # noqa: E402
from src.tools import pth2ckpt  # noqa: E402

# "Up to fp32 rounding", made precise: the official model run in float64 is the ground truth;
# our error against it may be at most a few times the official fp32 model's own error, plus a
# tiny absolute floor for stages whose fp32 error happens to be near zero.
ROUNDING_FACTOR = 4.0
ATOL = 1e-5


def _sharpen_swin_attention(model):
    """Official-init qkv weights (std .02) give almost uniform attention; scale them so the
    softmax, the relative bias and the mask matter in the comparison."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith('attn.qkv.weight'):
                p.mul_(8.0)
    return model


def _convert_and_load(tmodel, arch, tmp_path, wrap=None, formulation=None, **overrides):
    sd = tmodel.state_dict()
    if wrap == 'model':
        obj = {'model': sd}
    elif wrap == 'state_dict':
        obj = {'state_dict': {'module.' + k: v for k, v in sd.items()}}
    else:
        obj = sd
    pth, ckpt = str(tmp_path / 'official.pth'), str(tmp_path / 'converted.ckpt')
    torch.save(obj, pth)
    if overrides:  # the command line builds registered models as they are
        pth2ckpt.convert(arch, weights.load_pth(pth), ckpt, **overrides)
    else:
        assert pth2ckpt.main(['--arch', arch, '--pth', pth, '--ckpt', ckpt]) == 0
    net = create_model(arch, num_classes=pth2ckpt.infer_num_classes(weights.extract_state_dict(obj)),
                       formulation=formulation, **overrides)
    load_checkpoint_strict(net, ckpt)
    net.set_train(False)
    return net


def _calibrate_batchnorm(tmodel, x):
    """Running statistics measured on data, as in a trained network: random statistics make a
    50-layer ResNet's activations grow into the thousands, where any rounding is amplified."""
    bns = [m for m in tmodel.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    tmodel.train()
    with torch.no_grad():
        tmodel(torch.from_numpy(x))
    tmodel.eval()


def _torch_stages(tmodel, names, x, double=False):
    if double:
        previous = torch.get_default_dtype()
        # the official position() grid is built in the default dtype
        torch.set_default_dtype(torch.float64)
        try:
            return _torch_stages(copy.deepcopy(tmodel).double(), names, x.astype(np.float64))
        finally:
            torch.set_default_dtype(previous)
    outs = {}
    hooks = [tmodel.get_submodule(n).register_forward_hook(
        lambda m, i, o, n=n: outs.__setitem__(n, o.detach().numpy())) for n in names]
    with torch.no_grad():
        logits = tmodel(torch.from_numpy(x)).numpy()
    for h in hooks:
        h.remove()
    return [outs[n] for n in names] + [logits]


def _ms_resnet_stages(net, x):
    x = net.maxpool(net.relu(net.bn1(net.conv1(Tensor(x)))))
    outs = []
    for stage in (net.layer1, net.layer2, net.layer3, net.layer4):
        x = stage(x)
        outs.append(x.asnumpy())
    return outs


def _ms_swin_stages(net, x):
    x = net.patch_embed(Tensor(x))
    outs = [x.asnumpy()]
    for layer in net.layers:
        _, x = layer(x)  # the official BasicLayer returns the merged map
        outs.append(x.asnumpy())
    return outs


def _assert_close(got, want32, want64, what):
    """Returns (our max abs diff to the official fp32 output, official fp32's own max abs error)."""
    assert got.shape == want32.shape, what
    ours, official = float(np.abs(got - want64).max()), float(np.abs(want32 - want64).max())
    assert ours <= ROUNDING_FACTOR * official + ATOL * max(1.0, float(np.abs(want64).max())), (
        f'{what}: max abs error {ours:.3g} against float64, official fp32 has {official:.3g}')
    return float(np.abs(got - want32).max()), official


def _check(tmodel, net, stage_names, ms_stages, x):
    want32 = _torch_stages(tmodel, stage_names, x)
    want64 = _torch_stages(tmodel, stage_names, x, double=True)
    got = ms_stages(net, x) + [net(Tensor(x)).asnumpy()]
    names = stage_names + ['logits']
    return [_assert_close(g, w, w64, f'{names[i]}') for i, (g, w, w64) in enumerate(zip(got, want32, want64))]


def check_resnet(tmodel, arch, tmp_path, size, wrap=None, formulation=None, **overrides):
    tref.randomize_for_parity(tmodel.eval())
    rng = np.random.default_rng(0)
    _calibrate_batchnorm(tmodel, rng.normal(size=(4, 3, size, size)).astype(np.float32))
    net = _convert_and_load(tmodel, arch, tmp_path, wrap, formulation, **overrides)
    x = rng.normal(size=(2, 3, size, size)).astype(np.float32)
    return _check(tmodel, net, ['layer1', 'layer2', 'layer3', 'layer4'], _ms_resnet_stages, x)


def check_swin(tmodel, arch, tmp_path, size, wrap=None, formulation=None, **overrides):
    _sharpen_swin_attention(tref.randomize_for_parity(tmodel.eval()))
    net = _convert_and_load(tmodel, arch, tmp_path, wrap, formulation, **overrides)
    h, w = (size, size) if isinstance(size, int) else size
    x = np.random.default_rng(0).normal(size=(2, 3, h, w)).astype(np.float32)
    names = ['patch_embed'] + [f'layers.{i}' for i in range(len(net.layers))]
    return _check(tmodel, net, names, _ms_swin_stages, x)


@pytest.mark.parametrize('stride,h,w', [(1, 14, 13), (2, 14, 12)])
def test_acmix_layer_matches_official(stride, h, w, formulation):
    tlayer = tref.randomize_for_parity(tref.ACmix(16, 32, stride=stride).eval())
    layer = LocalAttentionACmix(16, 32, stride=stride, formulation=formulation)
    sd = weights.convert_state_dict({k: v.numpy() for k, v in tlayer.state_dict().items()}, layer)
    ms.load_param_into_net(layer, {k: ms.Parameter(Tensor(v), name=k) for k, v in sd.items()}, strict_load=True)
    x = np.random.default_rng(0).normal(size=(2, 16, h, w)).astype(np.float32)
    with torch.no_grad():
        want = tlayer(torch.from_numpy(x)).numpy()
    with torch.no_grad():
        previous = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)
        want64 = copy.deepcopy(tlayer).double()(torch.from_numpy(x.astype(np.float64))).numpy()
        torch.set_default_dtype(previous)
    _assert_close(layer(Tensor(x)).asnumpy(), want, want64, 'ACmix layer')


@pytest.mark.slow
def test_tiny_acmix_resnet_matches_official(tmp_path, formulation):
    torch.manual_seed(0)
    check_resnet(tref.acmix_resnet([1, 1, 1, 1], num_classes=10, base_channels=16), 'acmix_resnet_mini',
                 tmp_path, 128, wrap='state_dict', formulation=formulation, stem='imagenet')


@pytest.mark.slow
def test_tiny_plain_resnet_matches_official(tmp_path):
    torch.manual_seed(0)
    check_resnet(tref.resnet_plain([1, 1, 1, 1], num_classes=10, base_channels=16), 'resnet_mini',
                 tmp_path, 64, stem='imagenet')


MINI_SWIN = dict(img_size=32, patch_size=2, embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), window_size=4)


@pytest.mark.slow
def test_tiny_acmix_swin_matches_official(tmp_path, formulation):
    torch.manual_seed(0)
    tmodel = tref.swin(True, num_classes=10, **MINI_SWIN)
    check_swin(tmodel, 'acmix_swin_mini', tmp_path, 32, wrap='model', formulation=formulation)


@pytest.mark.slow
def test_tiny_plain_swin_matches_official(tmp_path, formulation):
    torch.manual_seed(0)
    check_swin(tref.swin(False, num_classes=10, **MINI_SWIN), 'swin_mini', tmp_path, 32, wrap='model',
               formulation=formulation)


PADDED_MINI_SWIN = dict(MINI_SWIN, img_size=(37, 57))


@pytest.mark.slow
def test_tiny_acmix_swin_padded_to_any_size_matches_official_detection_formulation(tmp_path, formulation):
    """37 x 57 pads at every level (patch embedding, the windows of every stage, the patch merging of
    odd sides); the last stage, 3 x 4 tokens, takes a padded, shifted window as in the detection
    code. The torch reference follows the official Swin detection backbone."""
    torch.manual_seed(0)
    check_swin(tref.swin(True, num_classes=10, **PADDED_MINI_SWIN), 'acmix_swin_mini', tmp_path, (37, 57),
               wrap='model', formulation=formulation, img_size=(37, 57))


@pytest.mark.slow
def test_tiny_plain_swin_padded_to_any_size_matches_official_detection_formulation(tmp_path, formulation):
    torch.manual_seed(0)
    check_swin(tref.swin(False, num_classes=10, **PADDED_MINI_SWIN), 'swin_mini', tmp_path, (37, 57),
               wrap='model', formulation=formulation, img_size=(37, 57))


FULL = [
    ('acmix_resnet26', lambda: tref.acmix_resnet([1, 2, 4, 1])),
    ('acmix_resnet38', lambda: tref.acmix_resnet([2, 3, 5, 2])),
    ('acmix_resnet50', lambda: tref.acmix_resnet([3, 4, 6, 3])),
    ('acmix_swin_tiny', lambda: tref.swin(True)),
    ('acmix_swin_small', lambda: tref.swin(True, depths=(2, 2, 18, 2))),
    ('swin_tiny', lambda: tref.swin(False)),
]


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get('ACMIX_FULL_PARITY') != '1', reason='full-size parity: set ACMIX_FULL_PARITY=1')
@pytest.mark.parametrize('arch,build', FULL, ids=[a for a, _ in FULL])
def test_full_size_matches_official(tmp_path, arch, build, formulation):
    torch.manual_seed(0)
    check = check_swin if 'swin' in arch else check_resnet
    diffs = check(build(), arch, tmp_path, 224, wrap='model' if 'swin' in arch else 'state_dict',
                  formulation=formulation)
    print(f'\n{arch} ({formulation}): max abs diff to official fp32 (official fp32 vs fp64) per stage, logits last: '
          + ', '.join(f'{d:.2e} ({o:.2e})' for d, o in diffs))


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get('ACMIX_FULL_PARITY') != '1', reason='full-size parity: set ACMIX_FULL_PARITY=1')
@pytest.mark.parametrize('acmix', [True, False], ids=['acmix_swin_tiny', 'swin_tiny'])
def test_full_size_swin_at_250x330_matches_official_detection_formulation(tmp_path, acmix, formulation):
    torch.manual_seed(0)
    arch = 'acmix_swin_tiny' if acmix else 'swin_tiny'
    diffs = check_swin(tref.swin(acmix, img_size=(250, 330)), arch, tmp_path, (250, 330), wrap='model',
                       formulation=formulation, img_size=(250, 330))
    print(f'\n{arch} 250x330 ({formulation}): max abs diff to official fp32 (official fp32 vs fp64) per stage, '
          'logits last: ' + ', '.join(f'{d:.2e} ({o:.2e})' for d, o in diffs))
