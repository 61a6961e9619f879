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
