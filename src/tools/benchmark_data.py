"""Throughput of the input pipelines per data-loading worker: images/s of the evaluation pipelines
(`eval_pipeline` official and fast) and of the training augmentation (`train_pipeline` official:
train, fast: train_fast), on real photographs.

    python -m src.tools.benchmark_data [--data_dir DIR] [--pipelines official fast train train_fast]
        [--config config/acmix_swin_tiny.yaml] [--image_size 224] [--workers 1] [--images 256]
        [--rounds 3] [--json out.json]

--data_dir is an ImageNet-layout folder (its val/ split for evaluation, train/ for training, each
read up to --images images); without it, a folder of --images JPEGs is written to a temporary folder
from matplotlib's sample photograph (needs matplotlib), at the sizes most common in ImageNet's
validation set (500 x 375, 375 x 500, 500 x 333). Each pipeline decodes, transforms and batches every
image with `--workers` parallel workers (`num_parallel_workers` of its map), once untimed (files in
the page cache, the workers started) and then --rounds times, interleaved with the other pipelines;
the median is reported. The evaluation and training settings (interpolation, crop_pct, the
augmentation) are the config's.
"""
import json
import os
import statistics
import sys
import tempfile
import time

from src.cli import run_main
from src.errors import ArgumentParser, UserError
from src.fileio import write_text

PIPELINES = ('official', 'fast', 'train', 'train_fast')
# (width, height) of the generated photos: the sizes most common in ImageNet's validation set
PHOTO_SIZES = ((500, 375), (375, 500), (500, 333))


def write_photo_folder(root, count, sizes=PHOTO_SIZES, split='val'):
    """root/<split>/photo/NNNN.jpg: `count` JPEGs (quality 90) of matplotlib's sample photograph, cycling
    through `sizes` (width, height), each image a different crop of the photograph. Returns root."""
    try:
        import matplotlib
    except ImportError:
        raise UserError('without --data_dir the benchmark writes photos from matplotlib\'s sample '
                        'photograph: pip install matplotlib, or pass --data_dir') from None
    from PIL import Image
    source = os.path.join(os.path.dirname(matplotlib.__file__), 'mpl-data', 'sample_data', 'grace_hopper.jpg')
    photo = Image.open(source).convert('RGB')  # 512 x 600
    folder = os.path.join(root, split, 'photo')
    os.makedirs(folder, exist_ok=True)
    for i in range(count):
        w, h = sizes[i % len(sizes)]
        shift = (i * 7) % 40  # a different crop each time, so that no two files are the same
        crop = photo.crop((shift, shift, photo.width - 40 + shift, photo.height - 40 + shift))
        crop.resize((w, h), Image.LANCZOS).save(os.path.join(folder, f'{i:04d}.jpg'), quality=90)
    return root


def split_of(pipeline):
    """The split a pipeline reads: train/ for the training augmentation, val/ for evaluation."""
    return 'train' if pipeline.startswith('train') else 'val'


def build_pipeline(cfg, pipeline, workers, images):
    """The dataset of one pipeline over the first `images` files of its split, batched by 32."""
    import mindspore.dataset as ds

    from src.config import Config
    from src.data.imagefolder import augment
    from src.data.transforms import eval_transforms
    data = ds.ImageFolderDataset(os.path.join(cfg.data_dir, split_of(pipeline)), shuffle=False,
                                 num_samples=images, num_parallel_workers=1)
    if split_of(pipeline) == 'train':
        cfg = Config(cfg, num_workers=workers, train_pipeline='fast' if pipeline == 'train_fast' else 'official')
        return augment(data, cfg, seed=0).batch(32)
    return data.map(eval_transforms(Config(cfg, eval_pipeline=pipeline)), input_columns='image',
                    num_parallel_workers=workers).batch(32)


def time_pipeline(data):
    """(images, seconds) of one pass over `data`."""
    start, count = time.perf_counter(), 0
    for images, _ in data.create_tuple_iterator(output_numpy=True, num_epochs=1):
        count += len(images)
    return count, time.perf_counter() - start


def main(argv=None):
    parser = ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--data_dir', default=None, help='ImageNet-layout folder (default: generated photos)')
    parser.add_argument('--pipelines', nargs='+', default=list(PIPELINES), choices=PIPELINES)
    parser.add_argument('--config', default=os.path.join('config', 'acmix_swin_tiny.yaml'),
                        help='the config whose data settings are used')
    parser.add_argument('--image_size', type=int, default=None, help="default: the config's")
    parser.add_argument('--workers', type=int, default=1, help='parallel workers of each pipeline\'s map')
    parser.add_argument('--images', type=int, default=256, help='images per pass')
    parser.add_argument('--rounds', type=int, default=3)
    parser.add_argument('--json', default=None, help='write the records to this file')
    args = parser.parse_args(argv)
    if min(args.workers, args.images, args.rounds) < 1:
        parser.error('--workers, --images and --rounds must be at least 1')

    from src.config import load_config
    from src.data.imagefolder import readable_images
    overrides = {} if args.image_size is None else {'image_size': args.image_size}
    cfg = load_config(args.config, overrides)
    with tempfile.TemporaryDirectory(prefix='benchmark_data_') as tmp:
        if args.data_dir is None:
            for split in {split_of(p) for p in args.pipelines}:
                write_photo_folder(tmp, args.images, split=split)
        cfg.data_dir = args.data_dir or tmp
        for split in {split_of(p) for p in args.pipelines}:
            if not os.path.isdir(os.path.join(cfg.data_dir, split)):
                raise UserError(f'{cfg.data_dir} has no {split}/ folder (the {split} pipelines read it)')
        pipelines = {name: build_pipeline(cfg, name, args.workers, args.images) for name in args.pipelines}
        times, counts = {name: [] for name in pipelines}, {}
        with readable_images(data_dir=cfg.data_dir):
            for name, data in pipelines.items():
                time_pipeline(data)  # untimed: page cache, workers started
            for round_index in range(args.rounds):
                for name, data in pipelines.items():
                    count, seconds = time_pipeline(data)
                    times[name].append(count / seconds)
                    counts[name] = count
                    print(f'[benchmark_data] round {round_index + 1}/{args.rounds}: {name} {count / seconds:.1f} '
                          f'images/s', file=sys.stderr, flush=True)
    records = [{'pipeline': name, 'workers': args.workers, 'image_size': cfg.image_size,
                'interpolation': cfg.interpolation, 'images': counts[name],
                'images_per_s': statistics.median(values), 'rounds': values}
               for name, values in times.items()]
    print(f'{"pipeline":10} {"workers":>7} {"size":>5} {"images/s":>9}')
    for r in records:
        print(f'{r["pipeline"]:10} {r["workers"]:>7} {r["image_size"]:>5} {r["images_per_s"]:>9.1f}')
    speeds = {r['pipeline']: r['images_per_s'] for r in records}
    for official, fast in (('official', 'fast'), ('train', 'train_fast')):
        if official in speeds and fast in speeds:
            print(f'{official} / {fast}: {speeds[official] / speeds[fast]:.2f}')
    if args.json:
        write_text(args.json, json.dumps(records, indent=2))
    return 0


if __name__ == '__main__':
    sys.exit(run_main(main))
