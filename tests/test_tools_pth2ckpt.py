"""The converter on synthetic state_dicts with the official key names and shapes (no torch
needed), its errors, and the all-or-nothing checkpoint write."""
import os

import numpy as np
import pytest

import official_code
from src.models import create_model, weights
from src.models.weights import CheckpointMismatchError, load_checkpoint_strict
from src.tools import pth2ckpt

TORCH_LEAF = {'gamma': 'weight', 'beta': 'bias', 'moving_mean': 'running_mean', 'moving_variance': 'running_var'}


def official_state_dict(net, rng):
    """What the official torch model's state_dict holds, by name and shape, with random values."""
    sd = {}
    for p in net.get_parameters():
        prefix, _, leaf = p.name.rpartition('.')
        key = f'{prefix}.{TORCH_LEAF.get(leaf, leaf)}' if prefix else p.name
        sd[key] = rng.normal(size=p.shape).astype(np.float32)
        if leaf == 'moving_variance':
            sd[f'{prefix}.num_batches_tracked'] = np.array(7)
        if leaf == 'relative_position_bias_table':
            sd[f'{prefix}.relative_position_index'] = np.zeros((16, 16), np.int64)
    return sd


@pytest.mark.parametrize('arch,official_keys', [
    ('acmix_resnet_mini', ['layer1.0.conv2.rate1', 'layer1.0.conv2.conv_p.bias', 'layer1.0.conv2.fc.weight',
                           'layer1.0.conv2.dep_conv.weight', 'layer2.0.downsample.1.running_var', 'fc.bias']),
    ('acmix_swin_mini', ['patch_embed.proj.weight', 'layers.0.blocks.1.attn.relative_position_bias_table',
                         'layers.0.blocks.1.attn.fc.bias', 'layers.0.blocks.1.attn.rate2',
                         'layers.0.downsample.reduction.weight', 'layers.0.downsample.norm.weight', 'head.weight']),
])
def test_converts_official_layout(tmp_path, arch, official_keys):
    net = create_model(arch, num_classes=7)
    sd = official_state_dict(net, np.random.default_rng(0))
    for key in official_keys:
        assert key in sd
    assert not any(k.endswith('dep_conv.bias') for k in sd)  # the official dep_conv has no bias
    wrapped = {'state_dict': {'module.' + k: v for k, v in sd.items()}}
    ckpt = str(tmp_path / 'out.ckpt')
    pth2ckpt.convert(arch, weights.extract_state_dict(wrapped), ckpt)
    fresh = load_checkpoint_strict(create_model(arch, num_classes=7), ckpt)
    params = {p.name: p.asnumpy() for p in fresh.get_parameters()}
    bn = 'layer2.0.downsample.1' if 'resnet' in arch else 'layers.0.downsample.norm'
    leaf = 'moving_variance' if 'resnet' in arch else 'gamma'
    torch_leaf = TORCH_LEAF[leaf]
    np.testing.assert_array_equal(params[f'{bn}.{leaf}'], sd[f'{bn}.{torch_leaf}'])
    np.testing.assert_array_equal(params[official_keys[0]], sd[official_keys[0]])


def test_model_wrapper_and_num_classes():
    sd = {'model': {'head.weight': np.zeros((3, 8)), 'head.bias': np.zeros(3)}}
    assert pth2ckpt.infer_num_classes(weights.extract_state_dict(sd)) == 3
    with pytest.raises(weights.ConversionError, match='no state_dict'):
        weights.extract_state_dict({})


@pytest.mark.parametrize('damage,expected', [
    ('drop', '1 missing from the checkpoint: layer1.0.conv2.rate1'),
    ('extra', '1 unexpected in the checkpoint: layer1.0.conv2.dep_conv.bias'),
    ('reshape', '1 with the wrong shape: layer1.0.conv2.fc.weight (9, 12, 1, 3)'),
])
def test_bad_state_dict_stops_and_writes_nothing(tmp_path, damage, expected):
    net = create_model('acmix_resnet_mini', num_classes=7)
    sd = official_state_dict(net, np.random.default_rng(0))
    if damage == 'drop':
        del sd['layer1.0.conv2.rate1']
    elif damage == 'extra':
        sd['layer1.0.conv2.dep_conv.bias'] = np.zeros(64, np.float32)
    else:
        sd['layer1.0.conv2.fc.weight'] = np.zeros((9, 12, 1, 3), np.float32)
    ckpt = tmp_path / 'out.ckpt'
    with pytest.raises(weights.ConversionError) as err:
        pth2ckpt.convert('acmix_resnet_mini', sd, str(ckpt))
    assert expected in str(err.value)
    assert os.listdir(tmp_path) == []


def test_strict_loader_names_mismatched_keys(tmp_path):
    import mindspore as ms
    small = create_model('resnet_mini', num_classes=7)
    ckpt = str(tmp_path / 'm.ckpt')
    ms.save_checkpoint(small, ckpt)
    with pytest.raises(CheckpointMismatchError, match=r'fc.weight \(7, 512\) vs \(4, 512\)'):
        load_checkpoint_strict(create_model('resnet_mini', num_classes=4), ckpt)
    with pytest.raises(CheckpointMismatchError, match=r'48 missing from the checkpoint: layer1.0.conv2.rate1, '
                                                      r'(.|\n)*4 unexpected in the checkpoint: layer1.0.conv2.weight'):
        load_checkpoint_strict(create_model('acmix_resnet_mini', num_classes=7), ckpt)
    load_checkpoint_strict(create_model('resnet_mini', num_classes=4), ckpt, skip_prefixes=('fc.',))


def _tiny_official_swin():
    torch = pytest.importorskip('torch')
    from src.tools import official_reference as tref
    torch.manual_seed(0)
    return tref, tref.swin(True, num_classes=3, img_size=32, patch_size=2, embed_dim=32, depths=(2, 2, 2, 2),
                           num_heads=(1, 2, 4, 8), window_size=4)


def test_every_official_pth_layout_reads_as_the_same_weights_without_running_its_objects(tmp_path):
    """The official training script's checkpoint holds a yacs config object: read as inert data."""
    tref, model = _tiny_official_swin()
    paths = official_code.write_pth_layouts(model, str(tmp_path))
    read = {layout: weights.load_pth(path) for layout, path in paths.items()}
    assert not official_code.CfgNode.constructed
    want = {k: v.numpy() for k, v in model.state_dict().items()}
    for layout, state_dict in read.items():
        assert state_dict.keys() == want.keys(), layout
        for key, value in want.items():
            np.testing.assert_array_equal(state_dict[key], value, err_msg=f'{layout} {key}')
    net = create_model('acmix_swin_mini', num_classes=3)  # and the weights convert
    assert weights.convert_state_dict(read['training'], net)


def test_a_pth_whose_pickle_would_run_a_command_is_read_without_running_it(tmp_path):
    torch = pytest.importorskip('torch')
    marker = tmp_path / 'ran'

    class Payload:
        def __reduce__(self):
            return os.system, (f'touch {marker}',)

    with_payload, only_payload = str(tmp_path / 'with_payload.pth'), str(tmp_path / 'payload.pth')
    torch.save({'model': {'head.weight': torch.ones(2, 3)}, 'extra': Payload()}, with_payload)
    torch.save(Payload(), only_payload)
    assert weights.load_pth(with_payload).keys() == {'head.weight'}
    with pytest.raises(weights.ConversionError, match='no state_dict'):
        weights.load_pth(only_payload)
    torch.save({'model': {'head.weight': Payload()}}, only_payload)
    with pytest.raises(weights.ConversionError, match=r"'head.weight' is a \S*\.system object, not a tensor"):
        weights.load_pth(only_payload)
    assert not marker.exists()


def test_a_file_that_is_not_a_checkpoint_is_one_error(tmp_path):
    pytest.importorskip('torch')
    path = tmp_path / 'notes.pth'
    path.write_text('not a checkpoint')
    with pytest.raises(weights.ConversionError, match=f'cannot read {path} as a PyTorch checkpoint'):
        weights.load_pth(str(path))
