"""Train an (ACmix) model on an ImageNet-layout folder.

    python train.py --config config/acmix_resnet26.yaml --data_dir /data/imagenet [--key value ...]

Graph mode by default (--mode pynative for debugging). Launched by msrun (or with an Ascend rank
table) it trains data parallel; only rank 0 writes logs and checkpoints.
"""
import os
import sys

import src  # noqa: F401  (environment defaults before MindSpore loads)
from src.config import config_from_args, save_config
from src.tools.cli import run_main
from src.engine.context import setup_context
from src.engine.trainer import train


def main(argv=None):
    cfg = config_from_args(__doc__.split('\n\n')[0], argv)
    rank, group_size = setup_context(cfg.device_target, cfg.mode, data_parallel=cfg.data_parallel)
    history = train(cfg, rank, group_size,
                    on_start=lambda: save_config(cfg, os.path.join(cfg.output_dir, 'config.yaml')))
    if rank == 0 and history:
        last = history[-1]
        print(f"done: {len(history)} epochs, last train loss {last['train_loss']:.4f}"
              + (f", val top-1 {last['val_top1']:.4f}" if 'val_top1' in last else ''))
    return 0


if __name__ == '__main__':
    sys.exit(run_main(main))
