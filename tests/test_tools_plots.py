"""Rate and training-curve plots."""
import json

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor

from conftest import assert_bad_input
from src.errors import UserError
from src.models import create_model
from src.tools import plot_curves, plot_rates


def test_read_rates_in_network_order(tmp_path):
    net = create_model('acmix_resnet_mini', num_classes=3)
    for i, layer in enumerate(('layer1', 'layer2', 'layer3', 'layer4')):
        acmix = getattr(net, layer)[0].conv2
        acmix.rate1.set_data(Tensor(np.array([0.1 * i], np.float32)))
        acmix.rate2.set_data(Tensor(np.array([1.0 - 0.1 * i], np.float32)))
    ckpt = str(tmp_path / 'a.ckpt')
    ms.save_checkpoint(net, ckpt)
    rates = plot_rates.read_rates(ckpt)
    assert [r[0] for r in rates] == ['layer1.0.conv2', 'layer2.0.conv2', 'layer3.0.conv2', 'layer4.0.conv2']
    np.testing.assert_allclose([r[1] for r in rates], [0.0, 0.1, 0.2, 0.3], atol=1e-6)
    np.testing.assert_allclose([r[2] for r in rates], [1.0, 0.9, 0.8, 0.7], atol=1e-6)
    pytest.importorskip('matplotlib')
    out = tmp_path / 'rates.png'
    assert plot_rates.main(['--ckpt', ckpt, '--out', str(out)]) == 0
    assert out.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n' and out.stat().st_size > 5000


def test_no_rates_is_a_clear_error(tmp_path):
    ckpt = str(tmp_path / 'plain.ckpt')
    ms.save_checkpoint(create_model('resnet_mini', num_classes=3), ckpt)
    with pytest.raises(UserError, match='no ACmix rates'):
        plot_rates.read_rates(ckpt)


def test_plot_curves(tmp_path):
    pytest.importorskip('matplotlib')
    history = [{'epoch': 1, 'train_loss': 2.0, 'lr': 0.1},
               {'epoch': 2, 'train_loss': 1.0, 'lr': 0.05, 'val_top1': 0.6, 'val_top5': 0.9, 'val_loss': 1.2}]
    metrics = tmp_path / 'metrics.json'
    metrics.write_text(json.dumps(history))
    out = tmp_path / 'curves.png'
    assert plot_curves.main(['--metrics', str(metrics), '--out', str(out)]) == 0
    assert out.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_missing_matplotlib_message(monkeypatch):
    import builtins
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith('matplotlib'):
            raise ImportError('No module named matplotlib')
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, '__import__', no_matplotlib)
    from src.tools.plots import pyplot
    with pytest.raises(UserError, match='pip install matplotlib'):
        pyplot()


def test_bad_input_is_one_error_line_and_exit_code_2(tmp_path, capsys):
    from src.cli import run_main
    empty = tmp_path / 'metrics.json'
    empty.write_text('[]')
    for argv, starts in ((['--metrics', str(tmp_path / 'none.json')], f'error: cannot read {tmp_path}/none.json'),
                         (['--metrics', str(empty)], f'error: {empty} holds no epochs')):
        code = run_main(plot_curves.main, argv + ['--out', str(tmp_path / 'c.png')])
        assert_bad_input(code, capsys.readouterr().err, starts)
    plain = str(tmp_path / 'plain.ckpt')
    ms.save_checkpoint(create_model('resnet_mini', num_classes=3), plain)
    code = run_main(plot_rates.main, ['--ckpt', plain, '--out', str(tmp_path / 'r.png')])
    assert_bad_input(code, capsys.readouterr().err, f'error: {plain} has no ACmix rates')
    assert not (tmp_path / 'c.png').exists() and not (tmp_path / 'r.png').exists()
