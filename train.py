"""Train an (ACmix) model on an ImageNet-layout folder.

    python train.py --config config/acmix_resnet26.yaml --data_dir /data/imagenet [--key value ...]

Graph mode by default (--mode pynative for debugging). Launched by msrun (or with an Ascend rank
table) it trains data parallel; rank 0 writes the log, and checkpoints are written by rank 0 and by one
rank of each server that does not share its output_dir (src/engine/ranks.py). SIGTERM or SIGINT (Ctrl-C)
stops it after the current step with a checkpoint of the exact position; `--resume auto` continues.
Exit codes: 0 done or stopped on request, 2 bad input, 1 a write the machine refused (disk full).
"""
import os
import shlex
import sys

import src  # noqa: F401  (environment defaults before MindSpore loads)

# isort: split
from src.cli import run_main
from src.config import config_from_args, save_config
from src.engine.context import setup_context
from src.engine.preemption import TrainingStopped
from src.engine.trainer import train
from src.models.weights import CheckpointMismatchError, ConversionError, load_weights


def pretrained_loader(cfg):
    """init_weights for train(): load cfg.pretrained, without the classifier if cfg.new_head."""
    if not cfg.pretrained:
        return None

    def init_weights(net):
        skip = (net.classifier_name + '.',) if cfg.new_head else ()
        try:
            load_weights(net, cfg.pretrained, skip_prefixes=skip, resize_windows=True)
        except (CheckpointMismatchError, ConversionError) as err:
            if cfg.new_head:
                raise
            raise type(err)(f'{err}\nto fine-tune on other classes with a new classifier, '
                            'add --new_head true') from None
        print(f'initialised from {cfg.pretrained}' + (' (new classifier head)' if cfg.new_head else ''), flush=True)
    return init_weights


def resume_command(argv=None):
    """This run's command line with --resume auto in place of any --resume."""
    args = list(sys.argv[1:] if argv is None else argv)
    kept, i = [], 0
    while i < len(args):
        if args[i] == '--resume':
            i += 2
            continue
        if not args[i].startswith(('--resume=', 'resume=')):
            kept.append(args[i])
        i += 1
    return ['python', 'train.py', *kept, '--resume', 'auto']


def main(argv=None):
    cfg = config_from_args(__doc__.split('\n\n')[0], argv)
    rank, group_size = setup_context(cfg.device_target, cfg.mode, data_parallel=cfg.data_parallel,
                                      max_device_memory=cfg.max_device_memory,
                                      precision_mode=cfg.ascend_precision_mode)
    try:
        history = train(cfg, rank, group_size,
                        on_start=lambda: save_config(cfg, os.path.join(cfg.output_dir, 'config.yaml')),
                        init_weights=pretrained_loader(cfg))
    except TrainingStopped:
        if rank == 0:
            print('stopped before the end; to continue: ' + ' '.join(shlex.quote(a) for a in resume_command(argv)),
                  flush=True)
        return 0
    if rank == 0 and history:
        last = history[-1]
        print(f"done: {len(history)} epochs, last train loss {last['train_loss']:.4f}"
              + (f", val top-1 {last['val_top1']:.4f}" if 'val_top1' in last else ''))
    return 0


if __name__ == '__main__':
    sys.exit(run_main(main))
