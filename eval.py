"""Evaluate a checkpoint on the validation folder: top-1, top-5 and loss over every image.

    python eval.py --config config/acmix_swin_tiny.yaml --data_dir /data/imagenet --checkpoint X.ckpt

`--checkpoint` may also be an official PyTorch .pth, converted on the fly (needs torch);
`--use_ema true` evaluates the weight average a training run with `ema: true` saved beside the weights.
Launched by msrun (or with an Ascend rank table) each rank evaluates its shard of the validation set
and rank 0 prints the result over all of it.
"""
import json
import os
import sys

import src  # noqa: F401

# isort: split
from src.cli import run_main
from src.config import ConfigError, config_from_args
from src.data.imagefolder import build_dataset, count_images, readable_images, set_bad_image_policy
from src.engine.context import setup_context
from src.engine.evaluate import evaluate
from src.models import build_model
from src.models.weights import load_weights
from src.progress import Progress


def main(argv=None):
    cfg = config_from_args(__doc__.split('\n\n')[0], argv)
    if not cfg.checkpoint:
        raise ConfigError('--checkpoint is required (a .ckpt, or an official .pth)')
    rank, group_size = setup_context(cfg.device_target, cfg.mode, data_parallel=False,
                                      max_device_memory=cfg.max_device_memory,
                                      precision_mode=cfg.ascend_precision_mode)
    net = load_weights(build_model(cfg), cfg.checkpoint, use_ema=cfg.use_ema)
    set_bad_image_policy(cfg.bad_images)
    val_dir = os.path.join(cfg.data_dir, 'val')
    with readable_images(data_dir=val_dir):
        result = evaluate(net, build_dataset(cfg, 'val', rank, group_size),
                          progress=Progress('eval', 'batches') if rank == 0 else None, jit_level=cfg.jit_level,
                          sum_over_ranks=group_size > 1)
    result['unreadable_skipped'] = count_images(val_dir) - result['count']
    if rank == 0:
        print(json.dumps({'checkpoint': os.path.basename(cfg.checkpoint), 'use_ema': cfg.use_ema,
                          'ranks': group_size, **result}))
    return 0


if __name__ == '__main__':
    sys.exit(run_main(main))
