"""Classify images with a checkpoint or an exported MINDIR; prints the top-5 classes.

    python -m src.tools.predict --config config/demo_cpu.yaml --checkpoint best.ckpt img1.png img2.png
    python -m src.tools.predict --config config/demo_cpu.yaml --mindir model.mindir data/digits/val/3/*.png

Class names come from the config's data_dir/train folder when it exists; 1000-class models without
one (or with ImageNet's synset folders) show the ImageNet-1k names; otherwise indices are shown.
When an image sits in a folder named after a class, its true label is printed too.
"""
import os
import re
import sys

import mindspore as ms
import numpy as np
from mindspore import Tensor, nn

from src.config import argument_parser, config_from_parsed
from src.data.imagefolder import DataError, class_names, imagenet_class_names, readable_images
from src.data.transforms import eval_transforms
from src.engine.context import setup_context

SYNSET = re.compile(r'n\d{8}')


def preprocess(cfg, path):
    """One image file -> (3, H, W) float32, as the evaluation pipeline prepares it."""
    with open(path, 'rb') as f:
        img = np.frombuffer(f.read(), np.uint8)
    with readable_images(path):
        for op in eval_transforms(cfg):
            img = op(img)
    return np.asarray(img, np.float32)


def display_names(cfg):
    """Class names: the training folders' (ImageNet synset folders shown by their names), the
    ImageNet-1k names for a 1000-class model without a data folder, else indices."""
    try:
        names = class_names(os.path.join(cfg.data_dir, 'train'))
    except DataError:
        names = None
    if cfg.num_classes == 1000 and (names is None or all(SYNSET.fullmatch(n) for n in names)):
        return imagenet_class_names()
    return names or [str(i) for i in range(cfg.num_classes)]


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def load_predictor(cfg, checkpoint=None, mindir=None):
    if mindir:
        return nn.GraphCell(ms.load(mindir))
    from src.models import build_model
    from src.models.weights import load_weights
    net = load_weights(build_model(cfg), checkpoint, use_ema=cfg.use_ema)
    net.set_train(False)
    return net


def main(argv=None):
    parser = argument_parser(__doc__.split('\n\n')[0])
    parser.usage = '%(prog)s [--config FILE] (--checkpoint CKPT | --mindir FILE) [--topk K] [--KEY VALUE ...] IMAGE ...'
    parser.add_argument('--mindir', help='exported .mindir, instead of --checkpoint')
    parser.add_argument('--topk', type=int, default=5)
    parser.add_argument('images', nargs='+')
    args, rest = parser.parse_known_args(argv)
    cfg = config_from_parsed(args, rest)
    if bool(cfg.checkpoint) == bool(args.mindir):
        parser.error('give one of --checkpoint (.ckpt or official .pth) and --mindir')
    missing = [p for p in args.images if not os.path.isfile(p)]
    if missing:
        parser.error(f'image file(s) not found: {", ".join(missing)}')
    setup_context(cfg.device_target, cfg.mode, distributed=False, max_device_memory=cfg.max_device_memory,
                  precision_mode=cfg.ascend_precision_mode)
    names = display_names(cfg)
    predictor = load_predictor(cfg, cfg.checkpoint, args.mindir)
    correct = 0
    for path in args.images:
        logits = predictor(Tensor(preprocess(cfg, path)[None])).asnumpy()[0]
        probs = softmax(logits.astype(np.float64))
        top = np.argsort(-probs)[:args.topk]
        label = lambda i: names[i] if i < len(names) else str(i)  # noqa: E731
        truth = os.path.basename(os.path.dirname(os.path.abspath(path)))
        shown = ', '.join(f'{label(i)} {probs[i]:.3f}' for i in top)
        if truth in names:
            correct += label(top[0]) == truth
            print(f'{path}: true {truth}, predicted {label(top[0])}  [top-{args.topk}: {shown}]')
        else:
            print(f'{path}: predicted {label(top[0])}  [top-{args.topk}: {shown}]')
    return 0


if __name__ == '__main__':
    from src.cli import run_main
    sys.exit(run_main(main))
