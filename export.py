"""Export a checkpoint to MINDIR (default), ONNX or AIR, and check the exported graph.

    python export.py --config config/acmix_resnet26.yaml --checkpoint X.ckpt [--file_format MINDIR]
        [--export_batch_size 1 | --dynamic_batch true] [--file_name out/acmix_resnet26]

The model is built in the portable formulation (src/layers/formulation.py), so the graph holds only
ops that every device runs and never a library of the exporting machine. A MINDIR does not depend on
the device it was exported on: when the configured device_target is not on this machine, the export
runs on the CPU (AIR needs an Ascend device). After writing a MINDIR it is loaded back with
nn.GraphCell and run, at batch sizes 2 and 3 when the batch is dynamic; the max abs difference to
the Cell is printed. ONNX works for models whose ops MindSpore's ONNX exporter supports (the plain
ResNets).
"""
import os
import sys

import numpy as np

import src  # noqa: F401

# isort: split
import mindspore as ms
from mindspore import Tensor, nn

from src.cli import run_main
from src.config import ConfigError, config_from_args
from src.engine.context import available_devices, setup_context
from src.errors import UserError
from src.fileio import atomic_write
from src.models import build_model
from src.models.weights import load_weights

SUFFIX = {'MINDIR': '.mindir', 'ONNX': '.onnx', 'AIR': '.air'}


def export(net, cfg, file_name):
    """Write the exported graph; returns its path."""
    shape = [None if cfg.dynamic_batch else cfg.export_batch_size, 3, cfg.image_size, cfg.image_size]
    if cfg.dynamic_batch:
        if cfg.file_format != 'MINDIR':
            raise ValueError('dynamic_batch is supported for MINDIR only')
        example = Tensor(shape=shape, dtype=ms.float32)
    else:
        example = Tensor(np.zeros(shape, np.float32))
    suffix = SUFFIX[cfg.file_format]
    return atomic_write(file_name + suffix, lambda tmp: ms.export(net, example, file_name=tmp[:-len(suffix)],
                                                                  file_format=cfg.file_format), suffix=suffix)


def check_mindir(net, path, batch_sizes, image_size, seed=0):
    """{batch size: max abs difference between the Cell and the exported MINDIR on a random batch}."""
    graph = nn.GraphCell(ms.load(path))
    rng = np.random.default_rng(seed)
    diffs = {}
    for batch_size in batch_sizes:
        x = Tensor(rng.normal(size=(batch_size, 3, image_size, image_size)).astype(np.float32))
        diffs[batch_size] = float(np.abs(graph(x).asnumpy() - net(x).asnumpy()).max())
    return diffs


class ExportError(UserError):
    """The chosen format cannot represent this model."""


def main(argv=None):
    cfg = config_from_args(__doc__.split('\n\n')[0], argv)
    if cfg.file_format == 'AIR' and cfg.device_target != 'Ascend':
        raise ConfigError('AIR export needs --device_target Ascend')
    device = cfg.device_target
    if device not in available_devices() and cfg.file_format != 'AIR':
        print(f'note: {device} is not available here; exporting on the CPU (the graph is the same)', file=sys.stderr)
        device = 'CPU'
    setup_context(device, cfg.mode, distributed=False, max_device_memory=cfg.max_device_memory,
                  precision_mode=cfg.ascend_precision_mode)
    cfg.model_overrides = {**cfg.model_overrides, 'formulation': 'portable'}
    net = build_model(cfg)
    if cfg.checkpoint:
        load_weights(net, cfg.checkpoint, use_ema=cfg.use_ema)
    else:
        print('warning: no --checkpoint given, exporting the randomly initialised model', file=sys.stderr)
    net.set_train(False)
    file_name = cfg.file_name or os.path.join(cfg.output_dir, cfg.arch)
    try:
        path = export(net, cfg, file_name)
    except (RuntimeError, ValueError, TypeError) as err:
        # MindSpore's exporter rejects ops it has no mapping for (ONNX): a choice of format, not a bug.
        raise ExportError(f'{cfg.file_format} export of {cfg.arch} failed: {str(err).splitlines()[0]}') from err
    print(f'wrote {path}')
    if cfg.file_format == 'MINDIR':
        batch_sizes = (2, 3) if cfg.dynamic_batch else (cfg.export_batch_size,)
        for batch, diff in check_mindir(net, path, batch_sizes, cfg.image_size).items():
            print(f'MINDIR check: max abs difference to the Cell on a batch of {batch}: {diff:.3g}')
    return 0


if __name__ == '__main__':
    sys.exit(run_main(main))
