"""The demo dataset: scikit-learn's bundled 1,797 8x8 scans of handwritten digits (no download),
written as RGB PNG files in the ImageNet folder layout with a stratified held-out val split."""
import os

import numpy as np

DONE_MARKER = '.complete'


def build_digits_folder(root, image_size=32, val_fraction=0.2, seed=0, progress=None):
    """Write root/{train,val}/<digit>/*.png once (skipped if already complete); returns
    (n_train, n_val)."""
    marker = os.path.join(root, DONE_MARKER)
    if os.path.isfile(marker):
        with open(marker) as f:
            n_train, n_val = map(int, f.read().split())
        return n_train, n_val
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise ImportError('the demo dataset needs scikit-learn: pip install scikit-learn') from err
    from PIL import Image

    digits = load_digits()
    images = (digits.images / 16.0 * 255.0).round().astype(np.uint8)  # (1797, 8, 8), values 0..16
    labels = digits.target
    rng = np.random.default_rng(seed)
    counts = {'train': 0, 'val': 0}
    total = len(images)
    done = 0
    for digit in range(10):
        idx = rng.permutation(np.flatnonzero(labels == digit))
        n_val = int(round(len(idx) * val_fraction))
        for split, part in (('val', idx[:n_val]), ('train', idx[n_val:])):
            folder = os.path.join(root, split, str(digit))
            os.makedirs(folder, exist_ok=True)
            for i in part:
                img = Image.fromarray(images[i], mode='L').resize((image_size, image_size), Image.BICUBIC)
                img.convert('RGB').save(os.path.join(folder, f'{i:04d}.png'))
                counts[split] += 1
                done += 1
                if progress is not None:
                    progress(done, total)
    with open(marker, 'w') as f:
        f.write(f"{counts['train']} {counts['val']}")
    return counts['train'], counts['val']


def main(argv=None):
    from ..errors import ArgumentParser
    from ..progress import Progress
    parser = ArgumentParser(description='Write the digits demo dataset as an ImageNet-layout folder.')
    parser.add_argument('--out', default='data/digits')
    parser.add_argument('--image_size', type=int, default=32)
    args = parser.parse_args(argv)
    progress = Progress(f'writing {args.out}', 'images')
    n_train, n_val = build_digits_folder(args.out, args.image_size, progress=progress.update)
    progress.close()
    print(f'{args.out}: {n_train} train and {n_val} val images, 10 classes')
    return 0


if __name__ == '__main__':
    from ..cli import run_main
    raise SystemExit(run_main(main))
