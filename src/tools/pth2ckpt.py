"""Convert an official ACmix / Swin PyTorch checkpoint (.pth) to a MindSpore checkpoint.

    python -m src.tools.pth2ckpt --arch acmix_swin_tiny --pth acmix_swin_tiny.pth --ckpt acmix_swin_tiny.ckpt

Accepts a raw state_dict, {'model': state_dict} (the released Swin-ACmix files) and
{'state_dict': state_dict} with 'module.' prefixes (the official ResNet training script).
Every network parameter must be matched by exactly one key of the right shape; otherwise the
conversion stops, listing the offending keys, and nothing is written. torch is needed only here,
to read the .pth file (pip install torch==2.13.0).
"""
import sys

import mindspore as ms
import numpy as np

from src.engine.checkpoint import describe_mismatch, save_checkpoint_atomic
from src.errors import ArgumentParser, UserError
from src.fileio import OutputWriteError
from src.models import create_model, list_models
from src.progress import Progress
from src.tools.cli import run_main

# Buffers of the official models that are constants here (built in __init__, not parameters).
IGNORED_LEAVES = ('num_batches_tracked', 'relative_position_index', 'attn_mask')
# torch leaf name -> candidate MindSpore leaf names (Conv/Dense keep weight/bias, norms use gamma/beta).
LEAF_CANDIDATES = {
    'weight': ('weight', 'gamma'),
    'bias': ('bias', 'beta'),
    'running_mean': ('moving_mean',),
    'running_var': ('moving_variance',),
}


class ConversionError(UserError):
    """The .pth file cannot be converted for this architecture."""


def extract_state_dict(obj):
    """The state_dict inside a loaded .pth object, with any 'module.' prefix removed."""
    if isinstance(obj, dict):
        for key in ('model', 'state_dict'):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj:
        raise ConversionError('no state_dict found: expected a state_dict, {"model": ...} or {"state_dict": ...}')
    out = {}
    for key, value in obj.items():
        name = key[len('module.'):] if key.startswith('module.') else key
        out[name] = _to_numpy(value)
    return out


def _to_numpy(value):
    if hasattr(value, 'detach'):  # torch.Tensor, without importing torch here
        value = value.detach().cpu()
        return value.float().numpy() if value.is_floating_point() else value.numpy()
    return np.asarray(value)


def load_pth(path, trust_pickle=False):
    """Read a .pth file into {name: ndarray}. Needs torch."""
    try:
        import torch
    except ImportError as err:
        raise ConversionError('reading a .pth file needs PyTorch: pip install torch==2.13.0') from err
    try:
        obj = torch.load(path, map_location='cpu', weights_only=not trust_pickle)
    except FileNotFoundError as err:
        raise ConversionError(f'no such file: {path}') from err
    except Exception as err:  # torch raises UnpicklingError/RuntimeError for arbitrary pickles
        if trust_pickle:
            raise
        raise ConversionError(f'{path} holds more than tensors ({type(err).__name__}: {str(err)[:200]}); if you '
                              'trust the file, rerun with --trust_pickle') from err
    return extract_state_dict(obj)


def map_key(key, param_names):
    """The MindSpore parameter name for a torch key, or None."""
    prefix, _, leaf = key.rpartition('.')
    for candidate in LEAF_CANDIDATES.get(leaf, (leaf,)):
        name = f'{prefix}.{candidate}' if prefix else candidate
        if name in param_names:
            return name
    return None


def convert_state_dict(state_dict, net, skip_prefixes=()):
    """{torch name: ndarray} -> {MindSpore name: ndarray} for `net`; raises ConversionError on
    any missing, unexpected or mis-shaped key. Keys starting with one of `skip_prefixes` (e.g.
    'fc.' for a new classifier) are neither converted nor required."""
    skip = tuple(skip_prefixes)
    params = {p.name: p for p in net.get_parameters() if not (skip and p.name.startswith(skip))}
    converted, matched, unexpected, mismatched = {}, set(), [], []
    for key, value in state_dict.items():
        if key.rpartition('.')[2] in IGNORED_LEAVES or (skip and key.startswith(skip)):
            continue
        name = map_key(key, params)
        if name is None:
            unexpected.append(key)
            continue
        matched.add(name)
        if tuple(value.shape) != tuple(params[name].shape):
            mismatched.append(f'{key} {tuple(value.shape)} vs {name} {tuple(params[name].shape)}')
        else:
            converted[name] = value.astype(np.float32)
    missing = [name for name in params if name not in matched]
    if missing or unexpected or mismatched:
        raise ConversionError('the checkpoint does not match the network:\n'
                              + describe_mismatch(missing, unexpected, mismatched))
    return converted


def infer_num_classes(state_dict):
    for key in ('head.weight', 'fc.weight'):
        if key in state_dict:
            return int(state_dict[key].shape[0])
    raise ConversionError('cannot infer the number of classes (no head.weight or fc.weight); pass --num_classes')


def convert(arch, state_dict, ckpt_path, num_classes=None, progress=None, **overrides):
    """Build `arch`, map `state_dict` onto it, write `ckpt_path` atomically; returns the net.
    `progress`: a src.progress.Progress, told each of the 3 steps."""
    num_classes = num_classes or infer_num_classes(state_dict)
    if progress is not None:
        progress.update(1, 3, f'building {arch} and mapping {len(state_dict)} tensors')
    net = create_model(arch, num_classes=num_classes, **overrides)
    converted = convert_state_dict(state_dict, net)
    if progress is not None:
        progress.update(2, 3, f'writing {ckpt_path}')
    save_checkpoint_atomic([{'name': n, 'data': ms.Tensor(v)} for n, v in converted.items()], ckpt_path)
    if progress is not None:
        progress.update(3, 3)
    return net


def main(argv=None):
    parser = ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--arch', required=True, choices=list_models(), metavar='ARCH',
                        help='registered model name: ' + ', '.join(list_models()))
    parser.add_argument('--pth', required=True, help='input PyTorch checkpoint')
    parser.add_argument('--ckpt', required=True, help='output MindSpore checkpoint')
    parser.add_argument('--num_classes', type=int, default=None, help='default: read from the head')
    parser.add_argument('--trust_pickle', action='store_true',
                        help='allow .pth files that hold arbitrary pickled objects (only for files you trust)')
    args = parser.parse_args(argv)
    progress = Progress('convert', 'of 3 steps')
    try:
        progress.update(0, 3, f'reading {args.pth}')
        state_dict = load_pth(args.pth, args.trust_pickle)
        convert(args.arch, state_dict, args.ckpt, args.num_classes, progress=progress)
    except (ConversionError, OutputWriteError) as err:
        raise type(err)(f'{err}\nnothing was written.') from None
    finally:
        progress.close()
    print(f'read {len(state_dict)} tensors from {args.pth}', flush=True)
    print(f'wrote {args.ckpt}')
    return 0


if __name__ == '__main__':
    sys.exit(run_main(main))
