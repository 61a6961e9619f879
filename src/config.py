"""Configuration: one flat schema of known keys with defaults, yaml files that set some of them (a
file may start from another with `base: <path>`, so a recipe is written once), command-line
overrides (`--key value` or `key=value`). An unknown or mistyped key is an error that
names it; values are checked against the type of their default and the allowed choices.

A config is a plain `Config` (attribute access to a dict), passed to the code that needs it; no
module reads configuration at import time.
"""
import argparse
import difflib
import os
import re

import yaml

from .errors import ArgumentParser, UserError
from .fileio import write_text

# key: (default, help). The type of the default is the key's type; None means "any / not set".
SCHEMA = {
    # model
    'arch': ('acmix_resnet26', 'registered model name (see src.models.list_models())'),
    'num_classes': (1000, 'classifier outputs'),
    'image_size': (224, 'training and evaluation crop size'),
    'drop_path_rate': (None, 'stochastic depth; null keeps the model default'),
    'model_overrides': ({}, 'extra create_model keyword arguments, e.g. {window_size: 4}'),
    # data
    'data_dir': ('', 'folder with train/<class>/ and val/<class>/ image folders'),
    'batch_size': (32, 'images per device and step'),
    'eval_batch_size': (64, 'images per step in evaluation'),
    'num_workers': (2, 'data-loading workers per device'),
    'interpolation': ('bilinear', 'resize interpolation: bilinear | bicubic'),
    'bad_images': ('stop', 'unreadable (corrupt, truncated) images: stop, naming the file | skip them '
                           '(counted; under data parallel replaced by other images, so ranks stay in step)'),
    'crop_pct': (0.875, 'eval: resize the short side to int(image_size / crop_pct), then centre-crop '
                        'image_size; in (0, 1]'),
    'eval_pipeline': ('official', "eval/predict input: official (PIL, the official torchvision pipeline's "
                                  "tensors bit for bit) | fast (MindSpore's C ops: faster, not the same "
                                  "tensors: no antialiasing)"),
    'train_pipeline': ('official', "training augmentation: official (PIL, the official timm / torchvision "
                                   "ops with per-sample seeds) | fast (MindSpore's C ops: faster, not the "
                                   "official augmentation: weaker RandAugment, zero-filled erasing, no "
                                   "antialiasing)"),
    'scale_min': (0.08, 'RandomResizedCrop minimum area fraction'),
    'hflip': (0.5, 'horizontal flip probability'),
    'rand_augment': (False, "RandAugment: timm's rand-m{rand_magnitude}-mstd{rand_magnitude_std}-inc1 (2 ops)"),
    'rand_magnitude': (9, 'RandAugment magnitude, 0-10 (fast: MindSpore reads it as bin 9 of 31)'),
    'rand_magnitude_std': (0.5, 'RandAugment magnitude noise, a standard deviation (fast: none)'),
    'random_erasing': (0.0, "RandomErasing probability (official: timm's 'pixel' mode, per-pixel N(0, 1))"),
    'mixup': (0.0, 'mixup alpha (0 = off)'),
    'cutmix': (0.0, 'cutmix alpha (0 = off)'),
    'mixup_switch_prob': (0.5, 'when both are on: probability of cutmix for a batch'),
    'label_smoothing': (0.1, 'label smoothing'),
    'label_smoothing_over': ('all', "all: timm's, label_smoothing / num_classes on every class (official Swin) "
                                    "| others: 1 - label_smoothing on the label, label_smoothing / "
                                    "(num_classes - 1) on each other class (official ResNet)"),
    # optimisation
    'optimizer': ('sgd', 'sgd (momentum) | adamw'),
    'lr': (0.1, 'base learning rate for lr_base_batch images; scaled linearly with the global batch'),
    'lr_base_batch': (256, 'global batch the base lr refers to'),
    'momentum': (0.9, 'SGD momentum'),
    'weight_decay': (1e-4, 'weight decay'),
    'no_decay_1d': (False, 'no weight decay on biases, norms, rates (1-D) and relative-position tables'),
    'epochs': (90, 'training epochs'),
    'warmup_epochs': (5, 'linear warm-up epochs'),
    'lr_schedule': ('timm_cosine', 'per-step lr: timm_cosine (official Swin: timm 0.3.2 CosineLRScheduler, '
                                   'linear warm-up from warmup_lr, cosine to min_lr counted from step 0) | '
                                   'resnet_cosine (official ResNet: warm-up from lr / 4, cosine to 0 from the '
                                   'end of the warm-up; warmup_lr and min_lr unused)'),
    'warmup_lr': (0.0, 'timm_cosine: learning rate at the start of warm-up, for lr_base_batch images like lr'),
    'min_lr': (0.0, 'timm_cosine: final learning rate, for lr_base_batch images like lr'),
    'clip_grad': (None, 'clip gradients to this global norm; null = off'),
    'accumulation_steps': (1, 'micro-batches of batch_size per optimizer update (gradients averaged): the '
                              'global batch is batch_size x devices x accumulation_steps, which the lr '
                              'scaling and the schedule count'),
    'ema': (False, 'keep an exponential moving average of the weights (saved in checkpoints, validated '
                   'each epoch beside the weights)'),
    'ema_decay': (0.9999, 'EMA: average <- ema_decay * average + (1 - ema_decay) * weights, per update'),
    # run
    'device_target': ('CPU', 'CPU | GPU | Ascend'),
    'mode': ('graph', 'graph | pynative (for debugging)'),
    'data_parallel': (True, 'under msrun/rank table: average gradients over ranks (false: ranks train '
                            'independently on their shards; a debugging control)'),
    'amp_level': ('O0', 'O0 (fp32) | O1 | O2 | O3; O1-O3 use dynamic loss scaling'),
    'jit_level': ('O0', "graph compilation of the training step and evaluation: O0 (kernel by kernel, "
                        "MindSpore's default) | O1 (operator fusion)"),
    'max_device_memory': ('', "device memory limit of MindSpore's memory pool, e.g. '30GB' "
                              "(ms.runtime.set_memory); '' = the framework's default"),
    'ascend_precision_mode': ('', "Ascend only: operator precision mode (ms.device_context.ascend.op_precision."
                                  "precision_mode); '' = the framework's default. must_keep_origin_dtype keeps "
                                  "float32 matmuls and convolutions in float32, which parity with the official "
                                  "logits needs"),
    'loss_scale': (65536.0, 'O1-O3: initial dynamic loss scale (2**16); halved on each overflow (down to 1), '
                            'doubled after 1000 steps without one. A resumed run continues with the saved scale'),
    # 32 is twice the 16 overflows that take the default scale 2**16 down to its floor of 1: the
    # search for a working scale at the start never skips that many in a row, and at scale 1 more
    # halving cannot help. A stalled run (every step skipped) stops after 32 lost steps.
    'max_skipped_steps': (32, 'O1-O3: stop with an error after this many steps in a row skipped for '
                              'gradient overflow (halving the scale each time)'),
    'seed': (1, 'random seed'),
    'output_dir': ('outputs/run', 'checkpoints, logs, metrics and the resolved config go here'),
    'log_interval': (20, 'log a line every N steps'),
    'keep_checkpoint_max': (3, 'keep the last N epoch checkpoints (plus best.ckpt)'),
    'eval_interval': (1, 'validate every N epochs (0 = only at the end)'),
    'resume': ('', "checkpoint to resume from, or 'auto' for the last one in output_dir"),
    'checkpoint': ('', 'eval/export: checkpoint to load (.ckpt, or an official .pth)'),
    'use_ema': (False, 'eval/export/predict: use the EMA weights of a checkpoint trained with ema: true'),
    'pretrained': ('', 'train: initial weights (.ckpt, or an official .pth), loaded strictly'),
    'new_head': (False, 'train with pretrained: leave the classifier out of the loaded weights, to '
                        'fine-tune on another set of classes'),
    # export
    'file_name': ('', 'export: output path without suffix (default: output_dir/<arch>)'),
    'file_format': ('MINDIR', 'export: MINDIR | ONNX | AIR (AIR needs Ascend)'),
    'export_batch_size': (1, 'export: batch size of the exported graph'),
    'dynamic_batch': (False, 'export: MINDIR with a dynamic batch dimension'),
}

CHOICES = {
    'interpolation': ('bilinear', 'bicubic'),
    'bad_images': ('stop', 'skip'),
    'eval_pipeline': ('official', 'fast'),
    'train_pipeline': ('official', 'fast'),
    'label_smoothing_over': ('all', 'others'),
    'lr_schedule': ('timm_cosine', 'resnet_cosine'),
    'optimizer': ('sgd', 'adamw'),
    'device_target': ('CPU', 'GPU', 'Ascend'),
    'mode': ('graph', 'pynative'),
    'amp_level': ('O0', 'O1', 'O2', 'O3'),
    'jit_level': ('O0', 'O1'),
    'ascend_precision_mode': ('', 'must_keep_origin_dtype', 'allow_fp32_to_fp16', 'force_fp16', 'force_fp32',
                              'allow_mix_precision', 'allow_mix_precision_fp16', 'allow_mix_precision_bf16',
                              'allow_fp32_to_bf16'),
    'file_format': ('MINDIR', 'ONNX', 'AIR'),
}


class ConfigError(UserError):
    """A configuration file or override is invalid."""


class Config(dict):
    """A dict whose keys are also attributes."""

    def __getattr__(self, key):
        try:
            return self[key]
        except KeyError as err:
            raise AttributeError(key) from err

    def __setattr__(self, key, value):
        self[key] = value


def _unknown(key):
    close = difflib.get_close_matches(key, list(SCHEMA), n=3)
    return f"unknown config key '{key}'" + (f" (did you mean {', '.join(close)}?)" if close else '')


# YAML 1.1 (PyYAML) reads 1e-3 and 1e30 as strings: a number needs a dot there (1.0e-3).
_SCIENTIFIC = re.compile(r'[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)[eE][-+]?[0-9]+')


def _coerce(key, value):
    default = SCHEMA[key][0]
    if isinstance(value, str) and (default is None or isinstance(default, float)) and _SCIENTIFIC.fullmatch(value):
        value = float(value)
    if value is None or default is None:
        return value
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif isinstance(value, type(default)):
        return value
    raise ConfigError(f"config key '{key}' must be {type(default).__name__}, got {value!r}")


def _validate(cfg):
    for key, choices in CHOICES.items():
        if cfg[key] not in choices:
            raise ConfigError(f"config key '{key}' must be one of {', '.join(choices)}, got {cfg[key]!r}")
    for key in ('num_classes', 'image_size', 'batch_size', 'eval_batch_size', 'epochs', 'log_interval',
                'keep_checkpoint_max', 'lr_base_batch', 'export_batch_size', 'max_skipped_steps',
                'accumulation_steps'):
        if cfg[key] < 1:
            raise ConfigError(f"config key '{key}' must be at least 1, got {cfg[key]}")
    float32_max = 3.4028234663852886e38  # the scale is a float32 Parameter, at least 1 (DynamicLossScaler)
    if not 1.0 <= cfg.loss_scale <= float32_max:
        raise ConfigError(f"config key 'loss_scale' must be between 1 and {float32_max:.4g}, got {cfg.loss_scale}")
    if cfg.max_device_memory and not re.fullmatch(r'[0-9]+(\.[0-9]+)?GB', cfg.max_device_memory):
        raise ConfigError("config key 'max_device_memory' must look like '30GB' (or be empty), got "
                          f'{cfg.max_device_memory!r}')
    if not 0.0 <= cfg.ema_decay < 1.0:
        raise ConfigError(f"config key 'ema_decay' must be in [0, 1), got {cfg.ema_decay}")
    if not 0.0 < cfg.crop_pct <= 1.0:  # above 1 the resized image would be smaller than its crop
        raise ConfigError(f"config key 'crop_pct' must be in (0, 1], got {cfg.crop_pct}")
    if cfg.warmup_epochs < 0 or cfg.warmup_epochs > cfg.epochs:
        raise ConfigError(f'warmup_epochs must be between 0 and epochs ({cfg.epochs}), got {cfg.warmup_epochs}')


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, but a key written twice in one mapping is an error (PyYAML keeps the
    last value without a word, so a recipe edited in two places would train what its author did not
    read). Keys brought in by a merge (`<<: *anchor`) may still be overridden, as YAML intends."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            lines = {}
            for key_node, _ in node.value:
                if key_node.tag == 'tag:yaml.org,2002:merge':
                    continue
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                if isinstance(key, (str, int, float, bool)) and key in lines:
                    where = f'on line {line}' if lines[key] == line else f'on lines {lines[key]} and {line}'
                    raise yaml.constructor.ConstructorError(None, None, f'key {key!r} is written twice, {where}',
                                                            key_node.start_mark)
                lines.setdefault(key, line)
        return super().construct_mapping(node, deep=deep)


def _yaml_problem(err, text):
    """'line L, column C: <the parser's problem>' for a PyYAML error in `text`."""
    if isinstance(err, yaml.MarkedYAMLError) and err.problem_mark is not None:
        mark, context = err.problem_mark, ''
        if err.context and err.context_mark is not None:  # e.g. the '[' a flow sequence was opened with
            context = (f' ({err.context} that starts at line {err.context_mark.line + 1}, '
                       f'column {err.context_mark.column + 1})')
        return f'line {mark.line + 1}, column {mark.column + 1}: {err.problem}{context}'
    if isinstance(err, yaml.reader.ReaderError):  # a character YAML does not allow, e.g. a NUL
        line = text.count('\n', 0, err.position) + 1
        column = err.position - (text.rfind('\n', 0, err.position) + 1) + 1
        return f'line {line}, column {column}: character U+{err.character:04X} is not allowed in YAML'
    return ' '.join(str(err).split())


def parse_yaml(text, source):
    """The value of YAML `text` (safe types only; a key twice in one mapping is an error); any way it
    fails to parse is a ConfigError '<source>: line L, column C: <problem>'."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as err:
        raise ConfigError(f'{source}: {_yaml_problem(err, text)}') from None


def _read_yaml_file(path, where):
    """The YAML value of file `path`; a file that cannot be read, is not UTF-8 or does not parse is a
    ConfigError naming it (and `where`: which file names it as its base)."""
    try:
        with open(path, 'rb') as f:
            data = f.read()
    except OSError as err:
        raise ConfigError(f'cannot read config file {path}{where}: {err.strerror}') from None
    try:
        text = data.decode('utf-8')
    except UnicodeDecodeError as err:
        line = data.count(b'\n', 0, err.start) + 1
        column = err.start - (data.rfind(b'\n', 0, err.start) + 1) + 1
        raise ConfigError(f'{path}{where}: line {line}, column {column}: not UTF-8 text '
                          f'(byte 0x{data[err.start]:02x})') from None
    return parse_yaml(text, f'{path}{where}')


def parse_overrides(items):
    """['--lr', '0.2', 'epochs=3', '--rand_augment=true'] -> {'lr': 0.2, 'epochs': 3, ...}; values are yaml."""
    out, i = {}, 0
    while i < len(items):
        item = items[i]
        if item.startswith('--'):
            item = item[2:]
            if '=' not in item:
                if i + 1 >= len(items):
                    raise ConfigError(f'--{item} needs a value')
                item = f'{item}={items[i + 1]}'
                i += 1
        if '=' not in item:
            raise ConfigError(f"cannot read override '{item}': use --key value or key=value")
        key, raw = item.split('=', 1)
        key = key.replace('-', '_')
        out[key] = parse_yaml(raw, f'the value of {key}') if raw != '' else ''
        i += 1
    return out


# A yaml file's `base: <path>` names a file whose keys it starts from; it is a property of the file,
# not a config key, so it never reaches the Config (or the saved config.yaml).
BASE_KEY = 'base'


def _read_file(path, named_by=None, chain=()):
    """The keys of yaml file `path` over those of its `base` chain, loaded recursively. `named_by` is
    the file whose `base` this is and `chain` the files above it, for the error messages."""
    where = f' (the base of {named_by})' if named_by else ''
    if not os.path.isfile(path):
        raise ConfigError(f'base config file not found: {path}, named by {named_by}' if named_by
                          else f'config file not found: {path}')
    # realpath: a cycle is the same file reached again, whatever relative path named it
    if os.path.realpath(path) in (os.path.realpath(p) for p in chain):
        raise ConfigError('config files name each other as base: ' + ' -> '.join((*chain, path)))
    loaded = _read_yaml_file(path, where) or {}
    if not isinstance(loaded, dict):
        raise ConfigError(f'{path}{where}: expected a mapping of keys to values')
    # every file is checked on its own, so an unknown key names the file it is written in
    for key in loaded:
        if key != BASE_KEY and key not in SCHEMA:
            raise ConfigError(_unknown(key) + f' in {path}{where}')
    values = {}
    if BASE_KEY in loaded:
        base = loaded.pop(BASE_KEY)
        if not isinstance(base, str) or not base:
            raise ConfigError(f"{path}: '{BASE_KEY}' must be the path of a yaml file, got {base!r}")
        # relative to the naming file's folder, so a config works from any working directory; the
        # real one, so a symlink to a shipped config (and the launchers' realpath of it) finds its base
        base_path = os.path.join(os.path.dirname(os.path.realpath(path)), os.path.expanduser(base))
        base_path = os.path.normpath(base_path)
        values = _read_file(base_path, path, (*chain, path))
    values.update(loaded)
    return values


def load_config(path=None, overrides=None):
    """Defaults <- base files (a yaml file's `base: <path>`, recursively) <- yaml file <- overrides;
    returns a validated Config."""
    overrides = overrides or {}
    if BASE_KEY in overrides:
        raise ConfigError(f"'{BASE_KEY}' cannot be overridden: it is a key of a yaml file "
                          f"(`{BASE_KEY}: <path>`); pass that file with --config")
    values = _read_file(path) if path else {}
    values.update(overrides)
    cfg = Config({k: v[0] for k, v in SCHEMA.items()})
    for key, value in values.items():
        if key not in SCHEMA:  # only overrides are left unchecked by _read_file
            raise ConfigError(_unknown(key))
        cfg[key] = _coerce(key, value)
    _validate(cfg)
    return _resolve_paths(cfg)


# Path-valued keys: resolved against ACMIX_CWD when it is set (see _resolve_paths).
PATH_KEYS = ('data_dir', 'output_dir', 'resume', 'checkpoint', 'pretrained', 'file_name')


def _resolve_paths(cfg):
    """With ACMIX_CWD set (an absolute folder), make the relative paths of PATH_KEYS absolute from it
    ('~' expanded; resume 'auto' and empty values are left alone). The rank-table launcher runs each
    rank in its own folder and sets ACMIX_CWD to the project root, so relative paths keep meaning what
    they mean there."""
    base = os.environ.get('ACMIX_CWD')
    if not base:
        return cfg
    for key in PATH_KEYS:
        value = cfg[key]
        if isinstance(value, str) and value and not (key == 'resume' and value == 'auto'):
            cfg[key] = os.path.normpath(os.path.join(os.path.abspath(base), os.path.expanduser(value)))
    return cfg


def save_config(cfg, path):
    write_text(path, yaml.safe_dump(dict(cfg), sort_keys=False))


_OVERRIDE = 'override_'


def argument_parser(description):
    """`--config FILE` plus one `--key value` option per schema key. Declaring the keys lets
    argparse tell their values from positional arguments (predict's image paths)."""
    parser = ArgumentParser(description=description, allow_abbrev=False,
                            usage='%(prog)s [--config FILE] [--KEY VALUE ...]',
                            epilog='Config keys can also be given as key=value.')
    parser.add_argument('--config', default=None, help='yaml config file (see config/)')
    group = parser.add_argument_group('config keys (override the file)')
    for key, (_, help_text) in SCHEMA.items():
        group.add_argument('--' + key, dest=_OVERRIDE + key, metavar='VALUE', default=argparse.SUPPRESS,
                           help=help_text.replace('%', '%%'))
    return parser


def config_from_parsed(args, rest):
    """The Config of parsed `argument_parser` arguments; `rest` holds key=value items and unknown
    options, which raise ConfigError naming the key."""
    given = [f'{name[len(_OVERRIDE):]}={value}' for name, value in vars(args).items() if name.startswith(_OVERRIDE)]
    return load_config(args.config, parse_overrides(given + list(rest)))


def config_from_args(description, argv=None):
    args, rest = argument_parser(description).parse_known_args(argv)
    return config_from_parsed(args, rest)
