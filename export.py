"""Export a checkpoint to MINDIR (default), ONNX or AIR, and check the exported graph.

    python export.py --config config/acmix_resnet26.yaml --checkpoint X.ckpt [--file_format MINDIR]
        [--export_batch_size 1 | --dynamic_batch true] [--file_name out/acmix_resnet26]

After writing a MINDIR it is loaded back with nn.GraphCell and run on a batch; the max abs
difference to the Cell is printed. ONNX works for models whose ops MindSpore's ONNX exporter
supports (the plain ResNets); AIR needs an Ascend device.
"""
import os
import sys

import numpy as np

import src  # noqa: F401
import mindspore as ms
from mindspore import nn, Tensor

from src.config import config_from_args
from src.tools.cli import run_main
from src.engine.context import setup_context
from src.engine.trainer import build_model
from src.layers.cpu_kernels import kernels_enabled
from src.tools.weights import load_weights

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
    os.makedirs(os.path.dirname(os.path.abspath(file_name)), exist_ok=True)
    path = file_name + SUFFIX[cfg.file_format]
    if os.path.exists(path):
        os.remove(path)  # MindSpore writes read-only files
    ms.export(net, example, file_name=file_name, file_format=cfg.file_format)
    return path


def check_mindir(net, path, batch_size, image_size, seed=0):
    """Max abs difference between the Cell and the exported MINDIR on a random batch."""
    graph = nn.GraphCell(ms.load(path))
    x = Tensor(np.random.default_rng(seed).normal(size=(batch_size, 3, image_size, image_size)).astype(np.float32))
    return float(np.abs(graph(x).asnumpy() - net(x).asnumpy()).max())


def main(argv=None):
    cfg = config_from_args(__doc__.split('\n\n')[0], argv)
    setup_context(cfg.device_target, cfg.mode, distributed=False)
    if cfg.file_format == 'AIR' and cfg.device_target != 'Ascend':
        raise SystemExit('error: AIR export needs --device_target Ascend')
    with kernels_enabled(False):  # the graph must not call this machine's compiled kernel library
        net = build_model(cfg)
    if cfg.checkpoint:
        load_weights(net, cfg.checkpoint)
    else:
        print('warning: no --checkpoint given, exporting the randomly initialised model', file=sys.stderr)
    net.set_train(False)
    file_name = cfg.file_name or os.path.join(cfg.output_dir, cfg.arch)
    try:
        path = export(net, cfg, file_name)
    except (RuntimeError, ValueError, TypeError) as err:
        raise SystemExit(f'error: {cfg.file_format} export of {cfg.arch} failed: {str(err).splitlines()[0]}') from err
    print(f'wrote {path}')
    if cfg.file_format == 'MINDIR':
        batch = 2 if cfg.dynamic_batch else cfg.export_batch_size
        print(f'MINDIR check: max abs difference to the Cell on a batch of {batch}: '
              f'{check_mindir(net, path, batch, cfg.image_size):.3g}')
    return 0


if __name__ == '__main__':
    sys.exit(run_main(main))
