"""The official training augmentation (src/data/augment.py, src/data/mixup.py) against the official
code: timm 0.3.2's RandAugment, RandomResizedCropAndInterpolation, RandomErasing and Mixup, fed the
same seeds as Python's and NumPy's global generators, give the same images, boxes and targets, op for
op; torchvision's resized crop gives the same pixels for the same box; the random parts drawn from
torch's generator (torchvision's crop, the flip, the erasing noise) are compared by seeded statistics.
Then the training pipeline: each sample's augmentation depends on its seed only (equal with one and
two workers), and the seeds on the pipeline's seed and rank.

timm and torchvision are imported as official_code.py says. timm's posterize calls PIL's with 0 bits at
magnitude 10, which PIL 11 and later refuse (the PIL of the official runs returned a black image): the
reference is given PIL's posterize with the old behaviour, written from PIL's formula.
"""
import os
import random
import types

import numpy as np
import pytest
from PIL import Image, ImageOps

import official_code
from src.config import load_config
from src.data import augment
from src.data.imagefolder import SampleSeeds, build_dataset
from src.data.mixup import MixupCutmix
from src.data.transforms import IMAGENET_MEAN

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SWIN_CONFIG = os.path.join(ROOT, 'config', 'acmix_swin_tiny.yaml')
RESNET_CONFIG = os.path.join(ROOT, 'config', 'acmix_resnet50.yaml')


@pytest.fixture(scope='module')
def photo():
    """matplotlib's sample photograph, small (the ops do not depend on the size; the crops are tested
    at ImageNet's sizes below)."""
    matplotlib = pytest.importorskip('matplotlib')
    path = os.path.join(os.path.dirname(matplotlib.__file__), 'mpl-data', 'sample_data', 'grace_hopper.jpg')
    return Image.open(path).convert('RGB').resize((80, 96), Image.LANCZOS)


def _posterize_as_pil_did(img, bits):
    mask = ~(2 ** (8 - bits) - 1) & 0xFF
    return img.point([v & mask for v in range(256)] * 3)


@pytest.fixture(scope='module')
def timm_auto_augment():
    module = official_code.timm_file('data', 'auto_augment')
    module.ImageOps = types.SimpleNamespace(
        autocontrast=ImageOps.autocontrast, equalize=ImageOps.equalize, invert=ImageOps.invert,
        solarize=ImageOps.solarize, posterize=_posterize_as_pil_did)
    return module


def _timm_hparams(image_size):
    """The hparams timm's create_transform gives RandAugment in the official Swin training."""
    return dict(translate_const=int(image_size * 0.45), img_mean=tuple(min(255, round(255 * m)) for m in IMAGENET_MEAN),
                interpolation=Image.BICUBIC)


def test_the_mean_fill_is_timms(timm_auto_augment):
    assert augment.MEAN_FILL == _timm_hparams(224)['img_mean'] == (124, 116, 104)


@pytest.mark.parametrize('magnitude', [0.0, 3.7, 9.0, 9.6, 10.0])
def test_each_rand_augment_op_is_timms(photo, timm_auto_augment, magnitude):
    """Each of the 15 ops at a fixed magnitude (probability 1, no noise), both signs of the signed ops."""
    names = [name for name, _ in augment.RAND_AUGMENT_OPS]
    assert names == timm_auto_augment._RAND_INCREASING_TRANSFORMS
    for name, op in augment.RAND_AUGMENT_OPS:
        official = timm_auto_augment.AugmentOp(name, prob=1.0, magnitude=magnitude, hparams=_timm_hparams(80))
        for seed in (0, 1, 4):  # the first draws of these seeds are above and below 0.5: both signs
            random.seed(seed)
            want = np.asarray(official(photo))
            got = np.asarray(op(photo, magnitude, random.Random(seed), Image.BICUBIC))
            np.testing.assert_array_equal(got, want, err_msg=f'{name} at magnitude {magnitude}, seed {seed}')


def test_rand_augment_is_timms_rand_m9_mstd05_inc1(photo, timm_auto_augment):
    """The whole RandAugment, op choice, probabilities and magnitude noise included, for 400 seeds."""
    official = timm_auto_augment.rand_augment_transform('rand-m9-mstd0.5-inc1', _timm_hparams(80))
    ours = augment.RandAugment(magnitude=9, magnitude_std=0.5)
    unchanged = 0
    for seed in range(400):
        random.seed(seed)
        np.random.seed(seed)
        want = np.asarray(official(photo))
        got = np.asarray(ours(photo, augment.SampleRandom(seed)))
        np.testing.assert_array_equal(got, want, err_msg=f'seed {seed}')
        unchanged += np.array_equal(got, np.asarray(photo))
    assert 0.15 < unchanged / 400 < 0.4  # both ops skipped with probability 1/4 (or a no-op op)


@pytest.mark.parametrize('size', [(500, 375), (375, 500), (500, 334), (180, 600), (64, 64)])
@pytest.mark.parametrize('scale', [(0.08, 1.0), (0.6, 1.0)])
def test_the_crop_box_is_timms(size, scale):
    transforms = official_code.timm_file('data', 'transforms')
    img = Image.new('RGB', size)
    for seed in range(300):
        random.seed(seed)
        top, left, h, w = transforms.RandomResizedCropAndInterpolation.get_params(img, scale, (3 / 4, 4 / 3))
        assert augment.random_resized_crop_box(*size, random.Random(seed), scale=scale) == (left, top, w, h), seed


@pytest.mark.parametrize('interpolation', ['bilinear', 'bicubic'])
def test_the_resized_crop_is_torchvisions(photo, interpolation):
    """The pixels of the crop of a given box, as torchvision's functional resized_crop (used by timm's
    crop for Swin and by torchvision's RandomResizedCrop for the ResNets) computes them."""
    functional = official_code.torchvision().transforms.functional
    mode = {'bilinear': functional.InterpolationMode.BILINEAR, 'bicubic': functional.InterpolationMode.BICUBIC}
    big = photo.resize((500, 375), Image.LANCZOS)
    for box in [(0, 0, 500, 375), (37, 12, 201, 150), (300, 100, 60, 90), (5, 300, 20, 31)]:
        left, top, w, h = box
        want = np.asarray(functional.resized_crop(big, top, left, h, w, [64, 64], mode[interpolation]))
        got = np.asarray(augment.resized_crop(big, box, 64, augment.PIL_RESAMPLE[interpolation]))
        np.testing.assert_array_equal(got, want, err_msg=str(box))


def test_the_crop_boxes_are_distributed_as_torchvisions():
    """torchvision's RandomResizedCrop draws from torch's generator: the same formulas, so the same
    distribution of area and aspect (means over 4000 draws on a 500 x 375 image)."""
    torch = pytest.importorskip('torch')
    crop = official_code.torchvision().transforms.RandomResizedCrop
    img = Image.new('RGB', (500, 375))
    torch.manual_seed(0)
    theirs = np.array([crop.get_params(img, (0.08, 1.0), (3 / 4, 4 / 3)) for _ in range(4000)], float)  # (i, j, h, w)
    rnd = random.Random(0)
    ours = np.array([augment.random_resized_crop_box(500, 375, rnd) for _ in range(4000)], float)  # (l, t, w, h)
    for name, a, b in [('area', theirs[:, 2] * theirs[:, 3], ours[:, 2] * ours[:, 3]),
                       ('log aspect', np.log(theirs[:, 3] / theirs[:, 2]), np.log(ours[:, 2] / ours[:, 3])),
                       ('left', theirs[:, 1], ours[:, 0]), ('top', theirs[:, 0], ours[:, 1])]:
        stderr = np.sqrt(a.var() / len(a) + b.var() / len(b))
        assert abs(a.mean() - b.mean()) < 4 * stderr, name


@pytest.mark.parametrize('shape', [(3, 224, 224), (3, 64, 48)])
def test_the_erased_box_is_timms(shape):
    torch = pytest.importorskip('torch')
    random_erasing = official_code.timm_file('data', 'random_erasing')
    official = random_erasing.RandomErasing(0.25, mode='pixel', max_count=1, device='cpu')
    erased = 0
    for seed in range(300):
        random.seed(seed)
        want = official(torch.zeros(shape)).numpy() != 0
        got = augment.random_erase_pixels(np.zeros(shape, np.float32), augment.SampleRandom(seed), 0.25) != 0
        np.testing.assert_array_equal(got, want, err_msg=f'seed {seed}')
        erased += got.any()
    assert 45 < erased < 105  # probability 0.25 of 300


def test_the_erasing_noise_is_per_pixel_standard_normal():
    values = []
    for seed in range(400):
        chw = augment.random_erase_pixels(np.zeros((3, 32, 32), np.float32), augment.SampleRandom(seed), 1.0)
        assert chw.dtype == np.float32
        values.append(chw[chw != 0])
    values = np.concatenate(values)
    assert len(values) > 50000
    assert abs(values.mean()) < 0.02 and abs(values.std() - 1) < 0.02
    assert abs(np.mean(np.abs(values) > 1.96) - 0.05) < 0.005


def _photo_folder(root, photo):
    for i, (w, h) in enumerate([(500, 375), (375, 500), (500, 334), (200, 150), (180, 600), (256, 256)]):
        folder = root / 'train' / f'c{i}'
        folder.mkdir(parents=True)
        photo.resize((w, h), Image.LANCZOS).save(folder / f'{w}x{h}.jpg', quality=90)
        photo.resize((w, h), Image.LANCZOS).convert('L').save(folder / f'{w}x{h}_gray.png')
    return str(root)


def _train_inputs(cfg, seed):
    batches = build_dataset(cfg, 'train', seed=seed).create_tuple_iterator(output_numpy=True, num_epochs=1)
    return np.concatenate([images for images, _ in batches])


@pytest.mark.parametrize('config', [SWIN_CONFIG, RESNET_CONFIG], ids=['swin', 'resnet'])
def test_the_training_pipeline_augments_each_sample_by_its_seed(tmp_path, photo, config):
    """Every sample of a seeded pipeline is OfficialTrainInput of its file and its seed, whichever of
    two workers ran it; another pipeline seed gives other images."""
    data_dir = _photo_folder(tmp_path, photo)
    cfg = load_config(config, {'data_dir': data_dir, 'image_size': 64, 'num_classes': 12, 'batch_size': 4,
                               'mixup': 0.0, 'cutmix': 0.0, 'label_smoothing': 0.0, 'num_workers': 2})
    assert cfg.train_pipeline == 'official'  # the default
    two_workers = _train_inputs(cfg, seed=5)
    one_worker = _train_inputs(load_config(config, {**cfg, 'num_workers': 1}), seed=5)
    np.testing.assert_array_equal(two_workers, one_worker)
    assert two_workers.shape == (12, 3, 64, 64) and two_workers.dtype == np.float32
    assert not np.array_equal(two_workers, _train_inputs(cfg, seed=6))
    # the images in the pipeline's (shuffled) order are each file under its sample seed
    import mindspore.dataset as ds
    ds.config.set_seed(5)
    files = ds.ImageFolderDataset(os.path.join(data_dir, 'train'), shuffle=True, num_parallel_workers=1)
    seeds = SampleSeeds(5)
    transform = augment.OfficialTrainInput(cfg)
    for index, (data, _) in enumerate(files.create_tuple_iterator(output_numpy=True, num_epochs=1)):
        np.testing.assert_array_equal(two_workers[index], transform(*seeds(data)), err_msg=str(index))


def test_sample_seeds_depend_on_the_pipeline_seed_and_rank():
    def first_50(*args):
        seeds = SampleSeeds(*args)
        return tuple(int(seeds(b'')[1]) for _ in range(50))
    assert first_50(3, 0) == first_50(3, 0)
    assert len({first_50(*args) for args in [(3, 0), (3, 1), (4, 0), (None, 0)]}) == 4
    assert SampleSeeds(None)(b'')[1].dtype == np.uint32


@pytest.mark.parametrize('mixup,cutmix', [(0.8, 1.0), (0.8, 0.0), (0.0, 1.0)])
def test_mixup_and_cutmix_are_timms(mixup, cutmix):
    """50 batches through timm's Mixup (the official settings: prob 1, switch 0.5, 'batch' mode,
    correct_lam, smoothing 0.1) after np.random.seed(s), and through ours seeded with s."""
    torch = pytest.importorskip('torch')
    import functools
    module = official_code.timm_file('data', 'mixup')
    # timm 0.3.2 builds the targets on device='cuda' by default (the official runs were on GPUs)
    if not isinstance(module.mixup_target, functools.partial):
        module.mixup_target = functools.partial(module.mixup_target, device='cpu')
    official = module.Mixup(
        mixup_alpha=mixup, cutmix_alpha=cutmix, prob=1.0, switch_prob=0.5, mode='batch', correct_lam=True,
        label_smoothing=0.1, num_classes=10)
    ours = MixupCutmix(10, mixup, cutmix, 0.5, 0.1, seed=3)
    rng = np.random.default_rng(0)
    np.random.seed(3)
    for index in range(50):
        images = rng.normal(size=(6, 3, 20, 24)).astype(np.float32)
        labels = rng.integers(0, 10, 6)
        want_images, want_targets = official(torch.tensor(images), torch.tensor(labels))
        got_images, got_targets = ours(images, labels)
        np.testing.assert_array_equal(got_images, want_images.numpy(), err_msg=str(index))
        np.testing.assert_array_equal(got_targets, want_targets.numpy(), err_msg=str(index))
