"""Config files and overrides: unknown keys and bad values are errors that name them."""
import glob
import os

import pytest
import yaml

from src.config import ConfigError, config_from_args, load_config, parse_overrides, save_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize('path', sorted(glob.glob(os.path.join(ROOT, 'config', '*.yaml'))))
def test_shipped_configs_load(path):
    cfg = load_config(path)
    assert cfg.arch in os.path.basename(path) or 'demo' in path


def test_unknown_key_in_file_is_named(tmp_path):
    path = tmp_path / 'c.yaml'
    path.write_text('arch: resnet50\nlearning_rate: 0.1\n')
    with pytest.raises(ConfigError, match="unknown config key 'learning_rate'.*c.yaml"):
        load_config(str(path))


def test_mistyped_override_suggests_key():
    with pytest.raises(ConfigError, match="unknown config key 'epoch' \\(did you mean epochs"):
        load_config(None, parse_overrides(['--epoch', '3']))


def test_overrides_and_types(tmp_path):
    cfg = load_config(os.path.join(ROOT, 'config', 'acmix_swin_tiny.yaml'),
                      parse_overrides(['--lr', '0.002', 'epochs=30', '--rand_augment=false', '--clip_grad', 'null']))
    assert cfg.lr == 0.002 and cfg.epochs == 30 and cfg.rand_augment is False and cfg.clip_grad is None
    assert cfg.optimizer == 'adamw'
    with pytest.raises(ConfigError, match="'epochs' must be int"):
        load_config(None, {'epochs': 'many'})
    with pytest.raises(ConfigError, match="'optimizer' must be one of sgd, adamw"):
        load_config(None, {'optimizer': 'lamb'})
    with pytest.raises(ConfigError, match='needs a value'):
        parse_overrides(['--lr'])


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(None, {'arch': 'resnet_mini', 'lr': 0.3})
    save_config(cfg, str(tmp_path / 'config.yaml'))
    again = load_config(str(tmp_path / 'config.yaml'))
    assert again == cfg
    assert yaml.safe_load((tmp_path / 'config.yaml').read_text())['lr'] == 0.3


def test_command_line_error_exits_with_message(capsys):
    with pytest.raises(SystemExit):
        config_from_args('x', ['--bogus_key', '1'])
    assert "unknown config key 'bogus_key'" in capsys.readouterr().err


def test_acmix_cwd_makes_relative_paths_absolute(monkeypatch, tmp_path):
    """The rank-table launcher runs each rank in its own folder with ACMIX_CWD=<project root>: relative
    paths still mean what they mean from there; absolute ones, resume 'auto' and empty values stay."""
    values = {'data_dir': 'data/imagenet', 'output_dir': 'outputs/../outputs/run', 'resume': 'auto',
              'checkpoint': '/abs/best.ckpt', 'pretrained': '', 'file_name': 'exported/net'}
    monkeypatch.delenv('ACMIX_CWD', raising=False)
    assert {k: load_config(None, values)[k] for k in values} == values
    monkeypatch.setenv('ACMIX_CWD', str(tmp_path))
    cfg = load_config(None, values)
    assert cfg.data_dir == str(tmp_path / 'data' / 'imagenet')
    assert cfg.output_dir == str(tmp_path / 'outputs' / 'run')
    assert (cfg.resume, cfg.checkpoint, cfg.pretrained) == ('auto', '/abs/best.ckpt', '')
    assert cfg.file_name == str(tmp_path / 'exported' / 'net')
    assert load_config(None, {'resume': 'outputs/run/last.ckpt'}).resume == str(tmp_path / 'outputs/run/last.ckpt')
    # a saved resolved config loads unchanged
    save_config(cfg, str(tmp_path / 'config.yaml'))
    assert load_config(str(tmp_path / 'config.yaml')) == cfg


def test_numbers_in_scientific_notation(tmp_path):
    """PyYAML reads 1e-3 as a string (YAML 1.1 wants 1.0e-3): float keys take it as a number anyway."""
    path = tmp_path / 'c.yaml'
    path.write_text('lr: 5e-4\nclip_grad: 1e1\n')
    cfg = load_config(str(path), parse_overrides(['--loss_scale', '1e30', '--warmup_lr', '-5E-7']))
    assert (cfg.lr, cfg.clip_grad, cfg.loss_scale, cfg.warmup_lr) == (5e-4, 10.0, 1e30, -5e-7)
    assert load_config(None, {'output_dir': '1e3'}).output_dir == '1e3'  # strings stay strings


def test_device_settings_are_checked():
    cfg = load_config(None, parse_overrides(['--jit_level', 'O1', '--max_device_memory', '30GB',
                                             '--ascend_precision_mode', 'must_keep_origin_dtype']))
    assert (cfg.jit_level, cfg.max_device_memory, cfg.ascend_precision_mode) == ('O1', '30GB', 'must_keep_origin_dtype')
    with pytest.raises(ConfigError, match="'max_device_memory' must look like '30GB'"):
        load_config(None, {'max_device_memory': '30G'})
    with pytest.raises(ConfigError, match="'ascend_precision_mode' must be one of"):
        load_config(None, {'ascend_precision_mode': 'fp32'})
    with pytest.raises(ConfigError, match="'jit_level' must be one of O0, O1"):
        load_config(None, {'jit_level': 'O2'})
