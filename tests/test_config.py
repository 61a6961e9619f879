"""Config files and overrides: unknown keys and bad values are errors that name them."""
import glob
import os

import pytest
import yaml

from src.config import ConfigError, config_from_args, load_config, parse_overrides, save_config
from src.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


MODEL_CONFIGS = sorted(glob.glob(os.path.join(ROOT, 'config', '*.yaml')))
BASE_CONFIGS = sorted(glob.glob(os.path.join(ROOT, 'config', 'base', '*.yaml')))


@pytest.mark.parametrize('path', MODEL_CONFIGS)
def test_shipped_configs_load(path):
    cfg = load_config(path)
    assert cfg.arch in os.path.basename(path) or 'demo' in path
    # arch and output_dir are per model: a base setting them would send two models to one folder
    own = yaml.safe_load(open(path))
    assert 'arch' in own and 'output_dir' in own


@pytest.mark.parametrize('path', BASE_CONFIGS)
def test_shipped_base_configs_load_and_are_used(path):
    """config/base/ holds the shared recipes: each loads on its own, sets no per-model key and is
    the base of some shipped file."""
    load_config(path)
    assert not {'arch', 'output_dir'} & set(yaml.safe_load(open(path)))
    named = {os.path.normpath(os.path.join(os.path.dirname(p), yaml.safe_load(open(p)).get('base', '')))
             for p in MODEL_CONFIGS + BASE_CONFIGS}
    assert path in named


def _write(folder, name, text):
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def test_base_precedence_and_two_level_chain(tmp_path):
    """Defaults < grandparent < parent < file < command line, and `base` is no key of the result."""
    _write(tmp_path, 'base/common.yaml', 'epochs: 50\nlr: 0.5\nseed: 7\nmomentum: 0.8\n')
    _write(tmp_path, 'base/recipe.yaml', 'base: common.yaml\nlr: 0.2\nepochs: 40\nwarmup_epochs: 2\n')
    path = _write(tmp_path, 'model.yaml', 'base: base/recipe.yaml\narch: resnet_mini\nlr: 0.05\n')
    cfg = load_config(path, parse_overrides(['--epochs', '4']))
    assert (cfg.epochs, cfg.lr, cfg.warmup_epochs, cfg.seed, cfg.momentum) == (4, 0.05, 2, 7, 0.8)
    assert cfg.arch == 'resnet_mini' and cfg.batch_size == 32  # own key; untouched default
    assert isinstance(cfg.lr, float) and 'base' not in cfg
    assert load_config(path).epochs == 40


def test_base_is_relative_to_the_naming_file(tmp_path, monkeypatch):
    _write(tmp_path, 'configs/base/r.yaml', 'lr: 0.3\n')
    path = _write(tmp_path, 'configs/m.yaml', 'base: base/r.yaml\n')
    _write(tmp_path, 'elsewhere/base/r.yaml', 'lr: 0.9\n')  # what a cwd-relative lookup would find
    monkeypatch.chdir(tmp_path / 'elsewhere')
    assert load_config(os.path.relpath(path)).lr == 0.3
    # through a symlink: the folder of the file it points to
    os.symlink(path, tmp_path / 'elsewhere' / 'link.yaml')
    assert load_config('link.yaml').lr == 0.3


def test_inherited_config_saves_whole(tmp_path):
    """The saved config.yaml is the resolved config: every key, no `base`, loadable without the bases."""
    _write(tmp_path, 'base.yaml', 'lr: 0.3\nepochs: 12\n')
    path = _write(tmp_path, 'm.yaml', 'base: base.yaml\narch: resnet_mini\n')
    cfg = load_config(path, {'seed': 5})
    out = tmp_path / 'run' / 'config.yaml'
    save_config(cfg, str(out))
    (tmp_path / 'base.yaml').unlink()
    written = yaml.safe_load(out.read_text())
    assert set(written) == set(cfg) and 'base' not in written
    assert (written['lr'], written['epochs'], written['seed']) == (0.3, 12, 5)
    assert load_config(str(out)) == cfg


def test_base_errors(tmp_path):
    m = _write(tmp_path, 'm.yaml', 'base: missing.yaml\n')
    with pytest.raises(ConfigError, match=r'base config file not found: .*missing\.yaml, named by .*m\.yaml'):
        load_config(m)
    a = _write(tmp_path, 'a.yaml', 'base: b.yaml\n')
    _write(tmp_path, 'b.yaml', 'base: ./a.yaml\n')
    with pytest.raises(ConfigError, match=r'name each other as base: .*a\.yaml -> .*b\.yaml -> .*a\.yaml$'):
        load_config(a)
    s = _write(tmp_path, 'self.yaml', 'base: self.yaml\n')
    with pytest.raises(ConfigError, match='name each other as base'):
        load_config(s)
    _write(tmp_path, 'list.yaml', '- lr: 0.1\n')
    with pytest.raises(ConfigError, match=r'list\.yaml \(the base of .*l\.yaml\): expected a mapping'):
        load_config(_write(tmp_path, 'l.yaml', 'base: list.yaml\n'))
    for value in ('3', '[a.yaml, b.yaml]', 'null', "''"):
        with pytest.raises(ConfigError, match=r"n\.yaml: 'base' must be the path of a yaml file"):
            load_config(_write(tmp_path, 'n.yaml', f'base: {value}\n'))
    _write(tmp_path, 'typo.yaml', 'lrr: 0.1\n')
    with pytest.raises(ConfigError,
                       match=r"unknown config key 'lrr' \(did you mean lr.*\) in .*typo\.yaml \(the base of"):
        load_config(_write(tmp_path, 't.yaml', 'base: typo.yaml\n'))


def test_yaml_problems_are_config_errors_with_the_line_and_column(tmp_path):
    cases = {
        'a: [1, 2\nb: 3\n': "line 2, column 2: expected ',' or ']', but got ':' (while parsing a flow sequence that "
                            'starts at line 1, column 4)',
        'a: 1\n  b: 2\n': 'line 2, column 4: mapping values are not allowed here',
        'a: \x00\n': 'line 1, column 4: character U+0000 is not allowed in YAML',
        'lr: 0.1\nepochs: 2\nlr: 0.2\n': "line 3, column 1: key 'lr' is written twice, on lines 1 and 3",
        'model_overrides:\n  paths: both\n  paths: attention\n': "line 3, column 3: key 'paths' is written "
                                                                  'twice, on lines 2 and 3',
        'model_overrides: {paths: both, paths: attention}\n': "line 1, column 32: key 'paths' is written twice, "
                                                              'on line 1',
    }
    for text, problem in cases.items():
        path = _write(tmp_path, 'c.yaml', text)
        with pytest.raises(ConfigError) as err:
            load_config(path)
        assert str(err.value) == f'{path}: {problem}'
    path = tmp_path / 'bytes.yaml'
    path.write_bytes(b'arch: resnet_mini\nlr: \xff0.1\n')
    with pytest.raises(ConfigError) as err:
        load_config(str(path))
    assert str(err.value) == f'{path}: line 2, column 5: not UTF-8 text (byte 0xff)'
    with pytest.raises(ConfigError) as err:
        parse_overrides(['--lr', '[1'])
    assert str(err.value) == ("the value of lr: line 1, column 3: expected ',' or ']', but got '<stream end>' "
                              '(while parsing a flow sequence that starts at line 1, column 1)')


def test_yaml_merge_keys_may_still_be_overridden(tmp_path):
    """Only a key written twice is an error; a key a merge (<<) brings in may be set again, as YAML intends."""
    path = _write(tmp_path, 'm.yaml', 'model_overrides:\n  <<: {paths: both, kernel_conv: 3}\n  paths: attention\n')
    assert load_config(path).model_overrides == {'paths': 'attention', 'kernel_conv': 3}


def test_base_is_not_an_override(tmp_path):
    path = _write(tmp_path, 'r.yaml', 'lr: 0.3\n')
    with pytest.raises(ConfigError, match="'base' cannot be overridden"):
        load_config(None, parse_overrides([f'base={path}']))
    with pytest.raises(ConfigError, match="'base' cannot be overridden"):
        load_config(os.path.join(ROOT, 'config', 'demo_cpu.yaml'), {'base': path})


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
    with pytest.raises(ConfigError, match="'eval_pipeline' must be one of official, fast"):
        load_config(None, {'eval_pipeline': 'opencv'})
    for crop_pct in (0.0, 1.2):  # a resized image smaller than its crop
        with pytest.raises(ConfigError, match=r"'crop_pct' must be in \(0, 1\]"):
            load_config(None, {'crop_pct': crop_pct})
    with pytest.raises(ConfigError, match='needs a value'):
        parse_overrides(['--lr'])


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(None, {'arch': 'resnet_mini', 'lr': 0.3})
    save_config(cfg, str(tmp_path / 'config.yaml'))
    again = load_config(str(tmp_path / 'config.yaml'))
    assert again == cfg
    assert yaml.safe_load((tmp_path / 'config.yaml').read_text())['lr'] == 0.3


def test_command_line_errors_are_config_errors():
    with pytest.raises(ConfigError, match="unknown config key 'bogus_key'"):
        config_from_args('x', ['--bogus_key', '1'])
    with pytest.raises(UserError, match='argument --config: expected one argument'):
        config_from_args('x', ['--config'])


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
