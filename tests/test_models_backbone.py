"""The model interface beyond logits: forward_features / forward_head / reset_classifier, out_indices,
create_model(checkpoint_path=...) for .ckpt and official .pth files (strict, the classifier left out of
a backbone), and Swin relative-position bias tables resized to another window size."""
import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor

from src.layers import relative_position_index
from src.models import create_model
from src.models.weights import CheckpointMismatchError, bicubic_resize_matrix, resize_bias_table

BIAS_TABLE = 'relative_position_bias_table'
FP32_ROUNDING = 2.0 ** -23  # one rounding to float32, relative
# The same kernels run as one graph (construct) and op by op (forward_features called from Python);
# on CPU the two agree to a few fp32 ulps of these O(1)-O(10) activations.
GRAPH_VS_OPS = dict(rtol=1e-5, atol=1e-5)


def _images(size=32, batch=2):
    return Tensor(np.random.default_rng(0).normal(size=(batch, 3, size, size)).astype(np.float32))


def _values(net):
    return {p.name: p.asnumpy().copy() for p in net.get_parameters()}


@pytest.mark.slow  # a classifier and its backbone compiled for each model: CI, not the inner loop
@pytest.mark.parametrize('arch,features_shape', [('resnet_mini', (2, 512, 4, 4)),
                                                 ('acmix_resnet_mini', (2, 512, 4, 4)),
                                                 ('swin_mini', (2, 4, 256)), ('acmix_swin_mini', (2, 4, 256))])
def test_forward_features_forward_head_and_reset_classifier(arch, features_shape):
    net = create_model(arch, num_classes=10)
    net.set_train(False)
    x = _images()
    logits = net(x).asnumpy()
    features = net.forward_features(x)
    assert features.shape == features_shape
    np.testing.assert_allclose(net.forward_head(features).asnumpy(), logits, **GRAPH_VS_OPS)

    name = net.classifier_name
    net.reset_classifier(3)
    assert net(x).shape == (2, 3)  # the graph compiled with the old head is not reused
    head = {p.name: p.shape for p in net.get_parameters() if p.name.startswith(name + '.')}
    assert head == {f'{name}.weight': (3, net.num_features), f'{name}.bias': (3,)}
    net.reset_classifier(0)
    assert net.forward_head(features).shape == (2, net.num_features)
    assert not any(p.name.startswith(name + '.') for p in net.get_parameters())


def test_out_indices():
    net = create_model('acmix_swin_mini', features_only=True, out_indices=(3, 1))
    assert net.out_indices == (1, 3)
    assert [(i['num_chs'], i['reduction'], i['module']) for i in net.feature_info] == [
        (64, 4, 'layers.1'), (256, 16, 'layers.3')]
    assert sorted(p.name for p in net.get_parameters() if p.name.startswith('norm')) == [
        'norm1.beta', 'norm1.gamma', 'norm3.beta', 'norm3.gamma']
    net.set_train(False)
    assert [m.shape for m in net(_images())] == [(2, 64, 8, 8), (2, 256, 2, 2)]
    resnet = create_model('resnet_mini', features_only=True, out_indices=(0, 1))
    resnet.set_train(False)
    assert [m.shape for m in resnet(_images())] == [(2, 64, 32, 32), (2, 128, 16, 16)]
    for bad in ((4,), (1, 1), (), (-1,)):
        with pytest.raises(ValueError, match='out_indices'):
            create_model('resnet_mini', features_only=True, out_indices=bad)
    with pytest.raises(ValueError, match='features_only'):
        net.reset_classifier(3)


def test_checkpoint_path_loads_strictly_and_a_backbone_leaves_the_classifier_out(tmp_path):
    trained = create_model('acmix_swin_mini', num_classes=10)
    ckpt = str(tmp_path / 'classifier.ckpt')
    ms.save_checkpoint(trained, ckpt)
    want = _values(trained)

    loaded = _values(create_model('acmix_swin_mini', num_classes=10, checkpoint_path=ckpt))
    assert all(np.array_equal(loaded[k], want[k]) for k in want)

    backbone = create_model('acmix_swin_mini', features_only=True, checkpoint_path=ckpt)
    for name, value in _values(backbone).items():
        if name.startswith('norm'):  # the per-output norms are new: they keep their initial values
            assert np.array_equal(value, np.ones_like(value) if name.endswith('gamma') else np.zeros_like(value))
        else:
            assert np.array_equal(value, want[name]), name
    # a backbone checkpoint (its per-output norms trained) loads them
    backbone.norm0.gamma.set_data(Tensor(np.full((32,), 2.0, np.float32)))
    features_ckpt = str(tmp_path / 'backbone.ckpt')
    ms.save_checkpoint(backbone, features_ckpt)
    again = create_model('acmix_swin_mini', features_only=True, checkpoint_path=features_ckpt)
    assert (again.norm0.gamma.asnumpy() == 2.0).all()

    with pytest.raises(CheckpointMismatchError, match=r'head.weight \(10, 256\) vs \(4, 256\)'):
        create_model('acmix_swin_mini', num_classes=4, checkpoint_path=ckpt)
    with pytest.raises(CheckpointMismatchError, match=r'unexpected in the checkpoint: .*rate1'):
        create_model('swin_mini', num_classes=10, checkpoint_path=ckpt)
    with pytest.raises(CheckpointMismatchError, match='missing from the checkpoint: norm.gamma, norm.beta, head'):
        create_model('acmix_swin_mini', num_classes=10, checkpoint_path=features_ckpt)

    resnet = create_model('resnet_mini', num_classes=10)
    resnet_ckpt = str(tmp_path / 'resnet.ckpt')
    ms.save_checkpoint(resnet, resnet_ckpt)
    resnet_backbone = _values(create_model('resnet_mini', features_only=True, checkpoint_path=resnet_ckpt))
    resnet_values = _values(resnet)
    assert resnet_backbone.keys() == {k for k in resnet_values if not k.startswith('fc.')}
    assert all(np.array_equal(v, resnet_values[k]) for k, v in resnet_backbone.items())


@pytest.mark.slow  # as above
@pytest.mark.parametrize('arch', ['acmix_resnet_mini', 'acmix_swin_mini'])
def test_backbone_maps_are_the_stages_of_the_classifier(tmp_path, arch):
    """The last map is the classifier's forward_features (Swin: with its final norm copied into
    norm3), and a subset of out_indices gives the same maps as the full set."""
    classifier = create_model(arch, num_classes=10)
    classifier.set_train(False)
    ckpt = str(tmp_path / 'classifier.ckpt')
    ms.save_checkpoint(classifier, ckpt)
    full = create_model(arch, features_only=True, checkpoint_path=ckpt)
    subset = create_model(arch, features_only=True, out_indices=(1, 3), checkpoint_path=ckpt)
    if 'swin' in arch:
        for net in (full, subset):
            net.norm3.gamma.set_data(classifier.norm.gamma.value())
            net.norm3.beta.set_data(classifier.norm.beta.value())
    full.set_train(False)
    subset.set_train(False)
    x = _images()
    maps, some = full(x), subset(x)
    want = classifier.forward_features(x).asnumpy()
    if 'swin' in arch:  # (B, h*w, C) tokens -> NCHW
        want = want.reshape(2, 2, 2, -1).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(maps[-1].asnumpy(), want, **GRAPH_VS_OPS)
    for got, index in zip(some, (1, 3)):
        np.testing.assert_allclose(got.asnumpy(), maps[index].asnumpy(), **GRAPH_VS_OPS)


def test_dilated_resnet_feature_info():
    net = create_model('resnet_mini', features_only=True, replace_stride_with_dilation=(False, True, True))
    assert [i['reduction'] for i in net.feature_info] == [1, 2, 2, 2]
    net.set_train(False)
    assert [m.shape[2] for m in net(_images())] == [32, 16, 16, 16]


def test_bicubic_resize_matrix():
    assert np.array_equal(bicubic_resize_matrix(13, 13), np.eye(13))
    for n_in, n_out in ((13, 23), (23, 13), (7, 11)):
        matrix = bicubic_resize_matrix(n_in, n_out)
        np.testing.assert_allclose(matrix.sum(1), 1.0, atol=1e-12)  # a constant table stays constant


@pytest.mark.parametrize('window,new_window', [(7, 12), (12, 7), (4, 6)])
def test_resized_bias_table_equals_torch_bicubic(window, new_window):
    torch = pytest.importorskip('torch')
    heads, side, new_side = 3, 2 * window - 1, 2 * new_window - 1
    table = np.random.default_rng(0).normal(size=(side * side, heads)).astype(np.float32)
    # official Swin's fine-tuning code (utils.load_pretrained), in float64: the table here is that
    # exact resize rounded once to float32 (torch in float32 rounds each of its 16 products and sums)
    want = torch.nn.functional.interpolate(torch.from_numpy(table).double().permute(1, 0).reshape(1, heads, side, side),
                                           size=(new_side, new_side), mode='bicubic')
    want = want.reshape(heads, new_side * new_side).permute(1, 0).numpy()
    np.testing.assert_allclose(resize_bias_table(table, new_window), want, rtol=FP32_ROUNDING, atol=1e-12)


def test_a_checkpoint_loads_into_another_window_size(tmp_path, capsys):
    trained = create_model('acmix_swin_mini', num_classes=10)  # window 4: 7x7 tables
    ckpt = str(tmp_path / 'window4.ckpt')
    ms.save_checkpoint(trained, ckpt)
    want = _values(trained)
    net = create_model('acmix_swin_mini', num_classes=10, window_size=6, checkpoint_path=ckpt)
    # stages 0 and 1 (16 and 8 tokens a side) take windows of 6; stages 2 and 3 stay one window of 4 and 2
    resized = 0
    for name, value in _values(net).items():
        if name.endswith(BIAS_TABLE) and value.shape != want[name].shape:
            assert name.startswith(('layers.0.', 'layers.1.'))
            np.testing.assert_array_equal(value, resize_bias_table(want[name], 6))
            resized += 1
        else:
            assert np.array_equal(value, want[name]), name
    assert resized == 4 and 'resized 4 relative-position bias tables' in capsys.readouterr().out
    index = net.layers[0].blocks[0].attn.relative_position_index.asnumpy()
    assert np.array_equal(index, relative_position_index(6).reshape(-1))


def test_official_224_weights_load_into_a_384_window_12_model(tmp_path):
    """The released Swin-ACmix .pth (224 px, window 7) as the start of a 384-px, window-12 fine-tune."""
    torch = pytest.importorskip('torch')
    from src.tools import official_reference as tref
    torch.manual_seed(0)
    state = tref.randomize_for_parity(tref.swin(True).eval()).state_dict()
    pth = str(tmp_path / 'acmix_swin_tiny_224.pth')
    torch.save({'model': state}, pth)
    net = create_model('acmix_swin_tiny', img_size=384, window_size=12, checkpoint_path=pth)
    tables = 0
    for p in net.get_parameters():
        if p.name.endswith(BIAS_TABLE):
            table = state[p.name]  # (13 * 13, heads)
            heads = table.shape[1]
            want = torch.nn.functional.interpolate(table.double().permute(1, 0).reshape(1, heads, 13, 13),
                                                   size=(23, 23), mode='bicubic').reshape(heads, 23 * 23).permute(1, 0)
            np.testing.assert_allclose(p.asnumpy(), want.numpy(), rtol=FP32_ROUNDING, atol=1e-12)
            tables += 1
    assert tables == 12  # every block: at 384 px every stage (96, 48, 24, 12 tokens) takes windows of 12
    # the .pth of a classifier into a backbone: the head and final norm left out, the tables resized
    backbone = _values(create_model('acmix_swin_tiny', features_only=True, img_size=384, window_size=12,
                                    checkpoint_path=pth))
    loaded = _values(net)
    assert all(np.array_equal(v, loaded[k]) for k, v in backbone.items() if not k.startswith('norm'))
    qkv = 'layers.2.blocks.3.attn.qkv.weight'
    assert np.array_equal(net.parameters_dict()[qkv].asnumpy(), state[qkv].numpy())
    assert np.array_equal(net.layers[3].blocks[1].attn.relative_position_index.asnumpy(),
                          relative_position_index(12).reshape(-1))


def test_a_run_cannot_turn_its_model_into_a_backbone_through_model_overrides():
    from types import SimpleNamespace

    from src.errors import UserError
    from src.models import build_model
    for key, value in (('features_only', True), ('checkpoint_path', 'x.ckpt'), ('out_indices', (0,))):
        cfg = SimpleNamespace(arch='resnet_mini', num_classes=3, image_size=32, drop_path_rate=None,
                              model_overrides={key: value})
        with pytest.raises(UserError, match=f'model_overrides cannot set {key}'):
            build_model(cfg)
