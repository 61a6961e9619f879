"""Convert an official ACmix / Swin PyTorch checkpoint (.pth) to a MindSpore checkpoint.

    python -m src.tools.pth2ckpt --arch acmix_swin_tiny --pth acmix_swin_tiny.pth --ckpt acmix_swin_tiny.ckpt

Accepts a raw state_dict, {'model': state_dict} (the released Swin-ACmix files), {'state_dict':
state_dict} with 'module.' prefixes (the official ResNet training script) and the official Swin training
script's full checkpoint (model, optimizer, scheduler, config object). Only tensors and plain containers
are constructed from the file: any other object it holds is read as opaque data, so no code is run.
Every network parameter must be matched by exactly one key of the right shape; otherwise the
conversion stops, listing the offending keys, and nothing is written. torch is needed only here,
to read the .pth file (pip install torch==2.13.0).
"""
import sys

import mindspore as ms

from src.cli import run_main
from src.engine.checkpoint import save_checkpoint_atomic
from src.errors import ArgumentParser
from src.fileio import OutputWriteError
from src.models import create_model, list_models
from src.models.weights import ConversionError, convert_state_dict, load_pth
from src.progress import Progress


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
    args = parser.parse_args(argv)
    progress = Progress('convert', 'of 3 steps')
    try:
        progress.update(0, 3, f'reading {args.pth}')
        state_dict = load_pth(args.pth)
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
