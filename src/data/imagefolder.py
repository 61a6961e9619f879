"""ImageNet-layout datasets (`<root>/train/<class>/*`, `<root>/val/<class>/*`) with mindspore.dataset.

The per-image transforms are in `transforms.py` (evaluation, and the fast training augmentation) and
`augment.py` (the official training augmentation); every pipeline reads grayscale, palette, RGBA (alpha
dropped) and CMYK images as RGB, as PIL's convert('RGB') does. Unreadable files (corrupt, truncated,
not an image) stop the run with an error naming the file, or with `bad_images: skip` are left out
(see `set_bad_image_policy`).
"""
import contextlib
import glob
import hashlib
import os
import re

import numpy as np
import mindspore.dataset as ds

from ..errors import UserError
from .augment import OfficialTrainInput
from .mixup import MixupCutmix
from .transforms import UndecodableImage, eval_transforms, fast_train_transforms

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.JPEG', '.JPG', '.PNG', '.BMP')


class DataError(UserError):
    """The dataset folder is missing, empty or inconsistent, or an image cannot be decoded."""


# MindSpore's Decode writes a copy of an image it cannot decode to the working directory.
_DECODE_DUMPS = 'abnormal_image.*'
_BAD_FILE = re.compile(r'The corresponding data file is: (.*?\.\w+)\. ')


def set_bad_image_policy(policy, distributed=False):
    """What the pipelines of this process do with an image they cannot decode: 'stop' raises
    (see `readable_images`); 'skip' leaves it out, except under data parallelism, where it is
    replaced by another sample: a skip would give the ranks different step counts and hang the
    gradient all-reduce. MindSpore reads the setting while iterating, so it is process-wide."""
    modes = ds.config.ErrorSamplesMode
    if policy == 'stop':
        mode = modes.RETURN
    else:
        mode = modes.REPLACE if distributed else modes.SKIP
    ds.config.set_error_samples_mode(mode)


@contextlib.contextmanager
def readable_images(path=None, data_dir=None):
    """Around iteration over a pipeline (or the eager decoding of the one file `path`): an image
    that cannot be decoded becomes a DataError naming the file, and the copy MindSpore dumps into
    the working directory is removed. MindSpore names the file when one of its C ops fails; when the
    PIL decoding of a Python op fails, the file is found in `data_dir` by its size and SHA-1."""
    before = set(glob.glob(_DECODE_DUMPS))
    try:
        yield
    except (RuntimeError, OSError) as err:  # OSError: PIL's, when the one file `path` is decoded
        found, undecodable = _BAD_FILE.search(str(err)), UndecodableImage.PATTERN.search(str(err))
        if path is not None:
            bad = path
        elif found is not None:
            bad = found.group(1)
        elif undecodable is not None:
            size, digest = int(undecodable.group(1)), undecodable.group(2)
            bad = _file_with_content(data_dir, size, digest) or f'an image of {size} bytes (sha1 {digest})'
        else:
            raise
        hint = '' if path else ', or set bad_images: skip to leave unreadable images out'
        raise DataError(f'cannot decode {bad} (corrupt, truncated or not an image); remove or replace '
                        f'it{hint}') from None
    finally:
        for dump in set(glob.glob(_DECODE_DUMPS)) - before:
            os.remove(dump)


def _file_with_content(folder, size, digest):
    """The first image file under `folder` (None: none) of `size` bytes whose SHA-1 is `digest`."""
    for root, _, files in os.walk(folder) if folder else ():
        for name in sorted(files):
            candidate = os.path.join(root, name)
            if name.endswith(IMAGE_EXTENSIONS) and os.path.getsize(candidate) == size:
                with open(candidate, 'rb') as f:
                    if hashlib.sha1(f.read()).hexdigest() == digest:
                        return candidate
    return None


def class_names(split_dir):
    if not os.path.isdir(split_dir):
        raise DataError(f'image folder not found: {split_dir} (expected <data_dir>/train/<class>/ and '
                        f'<data_dir>/val/<class>/)')
    names = sorted(d for d in os.listdir(split_dir) if os.path.isdir(os.path.join(split_dir, d)))
    if not names:
        raise DataError(f'no class folders in {split_dir}')
    return names


def imagenet_class_names():
    """The 1000 ImageNet-1k class names, in the index order of the sorted synset folders
    (n01440764 = 0, tench); the names are torchvision's, which make duplicates unique."""
    with open(os.path.join(os.path.dirname(__file__), 'imagenet_classes.txt')) as f:
        names = [line.strip() for line in f if line.strip()]
    assert len(names) == 1000, 'imagenet_classes.txt must list 1000 names'
    return names


def count_images(split_dir):
    return sum(1 for _, _, files in os.walk(split_dir) for f in files if f.endswith(IMAGE_EXTENSIONS))


class SampleSeeds:
    """(image bytes) -> (the same bytes, this sample's uint32 seed): the seeds of a pipeline's samples in
    order, drawn from a generator seeded by the pipeline's seed and rank (from OS entropy when the seed
    is None). Mapped with one worker, so the n-th sample gets the n-th seed."""

    def __init__(self, seed=None, rank=0):
        self.rng = np.random.default_rng(None if seed is None else [seed, rank])

    def __call__(self, data):
        return data, np.array(self.rng.integers(2 ** 32, dtype=np.uint32))


def augment(data, cfg, seed=None, rank=0):
    """`data` (columns image: file bytes, label) with the training augmentation of cfg.train_pipeline
    mapped over its images. official: each sample is augmented by its own generator, seeded from a
    column of per-sample seeds added in sample order, so the augmentation of a seeded pipeline does
    not depend on which worker thread runs which sample (the training checkpoints resume to the same
    batches). fast: MindSpore's C ops, seeded by ds.config.set_seed."""
    if cfg.train_pipeline == 'fast':
        return data.map(fast_train_transforms(cfg), input_columns='image', num_parallel_workers=cfg.num_workers)
    data = data.map(SampleSeeds(seed, rank), input_columns=['image'], output_columns=['image', 'sample_seed'],
                    num_parallel_workers=1)
    return data.map(OfficialTrainInput(cfg), input_columns=['image', 'sample_seed'], output_columns=['image'],
                    num_parallel_workers=cfg.num_workers)


def build_dataset(cfg, split, rank=0, group_size=1, seed=None, class_indexing=None):
    """Batched dataset of (images float32 NCHW, labels).

    split 'train': shuffled, sharded by rank, augmented, full batches only, labels are mixed /
    smoothed soft targets (N, num_classes). split 'val': every sample in order (the last batch may
    be partial), int32 labels (as ImageFolderDataset yields them); with group_size > 1 this rank's
    shard, samples rank, rank + group_size, ... of that order, so that the shards hold every sample
    exactly once (ImageFolderDataset's own sharding pads the shards to equal sizes by repeating
    samples, which evaluation would count twice).
    """
    split_dir = os.path.join(cfg.data_dir, split)
    names = class_names(split_dir)
    if class_indexing is None:
        class_indexing = {n: i for i, n in enumerate(names)}
    if len(class_indexing) > cfg.num_classes:
        raise DataError(f'{split_dir} has {len(class_indexing)} classes but num_classes is {cfg.num_classes}')
    training = split == 'train'
    if seed is not None:
        ds.config.set_seed(seed)
    folder = dict(num_parallel_workers=cfg.num_workers, class_indexing=class_indexing,
                  extensions=list(IMAGE_EXTENSIONS))
    if group_size == 1:
        data = ds.ImageFolderDataset(split_dir, shuffle=training, **folder)
    elif training:
        data = ds.ImageFolderDataset(split_dir, shuffle=True, num_shards=group_size, shard_id=rank, **folder)
    else:
        total = ds.ImageFolderDataset(split_dir, shuffle=False, **folder).get_dataset_size()
        if total < group_size:
            raise DataError(f'{split_dir} has {total} images, fewer than the {group_size} ranks evaluating it')
        data = ds.ImageFolderDataset(split_dir, sampler=ds.SubsetSampler(list(range(rank, total, group_size))),
                                     **folder)
    if training:
        data = augment(data, cfg, seed, rank)
        mix = MixupCutmix(cfg.num_classes, cfg.mixup, cfg.cutmix, cfg.mixup_switch_prob, cfg.label_smoothing,
                          seed=None if seed is None else seed + 7919 * rank, smoothing_over=cfg.label_smoothing_over)

        def per_batch(images, labels, _info):
            return mix(np.stack(images), np.stack(labels))

        return data.batch(cfg.batch_size, drop_remainder=True, input_columns=['image', 'label'],
                          per_batch_map=per_batch)
    data = data.map(eval_transforms(cfg), input_columns='image', num_parallel_workers=cfg.num_workers)
    return data.batch(cfg.eval_batch_size, drop_remainder=False)
