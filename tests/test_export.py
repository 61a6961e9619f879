"""MINDIR export round trip through export.py, and the predict tool on the exported graph."""
import os
import re

import mindspore as ms
import numpy as np
import pytest

import export as export_script
import official_code
from conftest import tiny_config
from src.engine.checkpoint import save_training_checkpoint
from src.models import build_model

pytestmark = pytest.mark.slow  # MINDIR round trips of the mini models and the entry points' runs


@pytest.mark.parametrize('arch,dynamic', [('acmix_resnet_mini', False), ('acmix_resnet_mini', True),
                                          ('resnet_mini', True), ('acmix_swin_mini', True), ('swin_mini', True)])
def test_mindir_round_trip(tiny_imagefolder, tmp_path, capsys, arch, dynamic):
    """One test per model family; a dynamic batch is checked at batch sizes 2 and 3. The MINDIR is
    exported from the portable formulation, the Cell compared with it is the CPU one."""
    cfg = tiny_config(tiny_imagefolder, tmp_path, arch=arch)
    net = build_model(cfg)
    ckpt = str(tmp_path / 'w.ckpt')
    save_training_checkpoint(ckpt, net)
    args = ['--arch', arch, '--num_classes', '3', '--image_size', '32', '--checkpoint', ckpt,
            '--file_name', str(tmp_path / 'model'), '--dynamic_batch', str(dynamic).lower(), '--export_batch_size', '2']
    assert export_script.main(args) == 0
    out = capsys.readouterr().out
    assert os.path.isfile(tmp_path / 'model.mindir')
    checked = {int(b): float(d) for b, d in re.findall(r'on a batch of (\d+): (\S+)', out)}
    assert sorted(checked) == ([2, 3] if dynamic else [2]) and max(checked.values()) <= 1e-5
    # The graph holds the checkpoint's weights: its output equals the Cell's on another input.
    net.set_train(False)
    graph = ms.nn.GraphCell(ms.load(str(tmp_path / 'model.mindir')))
    x = ms.Tensor(np.random.default_rng(3).normal(size=(2, 3, 32, 32)).astype(np.float32))
    np.testing.assert_allclose(graph(x).asnumpy(), net(x).asnumpy(), atol=1e-5)


def test_predict_on_mindir(tiny_imagefolder, tmp_path, capsys):
    from src.tools import predict
    cfg_args = ['--arch', 'resnet_mini', '--num_classes', '3', '--image_size', '32', '--crop_pct', '1.0',
                '--data_dir', tiny_imagefolder]
    ckpt = str(tmp_path / 'w.ckpt')
    save_training_checkpoint(ckpt, build_model(tiny_config(tiny_imagefolder, tmp_path)))
    assert export_script.main(cfg_args + ['--checkpoint', ckpt, '--file_name', str(tmp_path / 'm')]) == 0
    image = os.path.join(tiny_imagefolder, 'val', 'class_1', '0.png')
    cfg_file = tmp_path / 'c.yaml'
    cfg_file.write_text('arch: resnet_mini\nnum_classes: 3\nimage_size: 32\ncrop_pct: 1.0\n'
                        f'data_dir: {tiny_imagefolder}\n')
    capsys.readouterr()
    assert predict.main(['--config', str(cfg_file), '--mindir', str(tmp_path / 'm.mindir'), '--topk', '3', image]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f'{image}: true class_1, predicted class_')
    probs = [float(t.split()[1]) for t in line.split('[top-3: ')[1].rstrip(']').split(', ')]
    assert len(probs) == 3 and abs(sum(probs) - 1) < 1e-3 and probs == sorted(probs, reverse=True)


def test_eval_script_on_every_official_pth_layout(tiny_imagefolder, tmp_path, capsys):
    """eval.py takes an official .pth in each of its layouts (converted in memory), the official
    training script's full checkpoint included, and reports the same on every val image."""
    pytest.importorskip('torch')
    import json

    import eval as eval_script
    from src.tools import official_reference as tref
    tmodel = tref.swin(True, num_classes=3, img_size=32, patch_size=2, embed_dim=32, depths=(2, 2, 2, 2),
                       num_heads=(1, 2, 4, 8), window_size=4)
    results = {}
    for layout, pth in official_code.write_pth_layouts(tmodel, str(tmp_path)).items():
        assert eval_script.main(['--arch', 'acmix_swin_mini', '--num_classes', '3', '--image_size', '32',
                                 '--crop_pct', '1.0', '--data_dir', tiny_imagefolder, '--checkpoint', pth,
                                 '--eval_batch_size', '5']) == 0
        result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        results[layout] = {k: v for k, v in result.items() if k != 'checkpoint'}
    assert not official_code.CfgNode.constructed
    assert results['bare']['count'] == 12 and 0.0 <= results['bare']['top1'] <= 1.0
    assert all(result == results['bare'] for result in results.values()), results
