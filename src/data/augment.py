"""The official training augmentation on PIL images and normalised arrays, one sample at a time.

Both official recipes augment PIL images (read as torchvision's loader reads them) before ToTensor
and Normalize:

* Swin (timm 0.3.2's `create_transform(is_training=True)` with the official settings):
  RandomResizedCrop(S, scale=(0.08, 1), ratio=(3/4, 4/3), bicubic), horizontal flip with probability
  0.5, RandAugment 'rand-m9-mstd0.5-inc1' (fill: the ImageNet mean in 0-255, geometric ops bicubic),
  ToTensor, Normalize, then RandomErasing(0.25, mode='pixel', max_count=1) on the normalised tensor.
* ResNet (torchvision): RandomResizedCrop(224) bilinear and the horizontal flip.

Each random choice is drawn from a per-sample generator (`SampleRandom`), so that a sample's
augmentation depends on its seed only, not on which data-loading worker runs it, and in the order and
with the formulas of timm's code: fed the same seeds as Python's `random` and NumPy's global
generator, the crop, RandAugment and the erased box are timm's, op for op (tests/test_data_augment.py).
torchvision's crop and flip draw from torch's generator; their geometry and resampling are the same.
"""
import math
import random

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from .transforms import IMAGENET_MEAN, PIL_RESAMPLE, decode_rgb, normalized_chw

# the fill of RandAugment's geometric ops: timm's img_mean hparam, the mean in 0-255 rounded
MEAN_FILL = tuple(min(255, round(255 * m)) for m in IMAGENET_MEAN)  # (124, 116, 104)
MAX_MAGNITUDE = 10.0  # timm's _MAX_LEVEL: magnitude m means m / 10 of each op's range


class SampleRandom:
    """The random draws of one sample: Python's generator (timm draws crops, op probabilities,
    magnitudes, signs and erased boxes from `random`) and NumPy's legacy one (timm picks the
    RandAugment ops and we draw the erasing noise with it), both seeded by the sample's seed."""

    def __init__(self, seed):
        self.py = random.Random(seed)
        self.np = np.random.RandomState(seed)


# ----------------------------------------------------------------------------- crop and flip
def random_resized_crop_box(width, height, rnd, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """(left, top, w, h) of a random crop: up to 10 tries of an area fraction uniform in `scale` and
    an aspect ratio log-uniform in `ratio`, rounded to pixels, kept if it fits; else the largest centred
    crop within `ratio`. torchvision's RandomResizedCrop.get_params and timm's
    RandomResizedCropAndInterpolation compute this; these draws are timm's (rnd.uniform, rnd.randint)."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = rnd.uniform(*scale) * area
        aspect = math.exp(rnd.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if w <= width and h <= height:
            top = rnd.randint(0, height - h)
            left = rnd.randint(0, width - w)
            return left, top, w, h
    if width / height < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif width / height > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def resized_crop(img, box, size, resample):
    """The crop `box` (left, top, w, h) of `img` resized to size x size, as torchvision's resized_crop
    does on a PIL image (crop, then PIL's resize, which antialiases when it shrinks)."""
    left, top, w, h = box
    return img.crop((left, top, left + w, top + h)).resize((size, size), resample)


# ----------------------------------------------------------------------------- RandAugment
def _signed(value, rnd):
    """value or -value, each with probability 1/2 (timm negates when a uniform draw exceeds 0.5)."""
    return -value if rnd.random() > 0.5 else value


def _affine(img, matrix, resample):
    return img.transform(img.size, Image.AFFINE, matrix, resample=resample, fillcolor=MEAN_FILL)


def _solarize_add(img, add, threshold=128):
    table = [min(255, v + add) if v < threshold else v for v in range(256)]
    return img.point(table * 3)


def _enhance(enhancer):
    return lambda img, m, rnd, resample: enhancer(img).enhance(1.0 + _signed(m / MAX_MAGNITUDE * 0.9, rnd))


def _posterize(img, m, rnd, resample):
    """Keep the 4 - int(0.4 m) high bits of each value. At magnitude 10 that is 0 bits, a black image,
    as PIL's posterize gave when the official code ran; PIL 11 and later refuse 0 bits, so the table is
    built here."""
    mask = ~(2 ** (8 - (4 - int(m / MAX_MAGNITUDE * 4))) - 1) & 0xFF
    return img.point([v & mask for v in range(256)] * 3)


def _shear(axis):
    def op(img, m, rnd, resample):
        factor = _signed(m / MAX_MAGNITUDE * 0.3, rnd)
        return _affine(img, (1, factor, 0, 0, 1, 0) if axis == 'x' else (1, 0, 0, factor, 1, 0), resample)
    return op


def _translate(axis):
    def op(img, m, rnd, resample):
        fraction = _signed(m / MAX_MAGNITUDE * 0.45, rnd)
        if axis == 'x':
            return _affine(img, (1, 0, fraction * img.size[0], 0, 1, 0), resample)
        return _affine(img, (1, 0, 0, 0, 1, fraction * img.size[1]), resample)
    return op


# timm's 15 "increasing" RandAugment ops (the 'inc1' list, in its order: the op index is drawn), each
# (image, magnitude in [0, 10], generator, resample) -> image, the strength growing with the magnitude
RAND_AUGMENT_OPS = (
    ('AutoContrast', lambda img, m, rnd, resample: ImageOps.autocontrast(img)),
    ('Equalize', lambda img, m, rnd, resample: ImageOps.equalize(img)),
    ('Invert', lambda img, m, rnd, resample: ImageOps.invert(img)),
    ('Rotate', lambda img, m, rnd, resample: img.rotate(_signed(m / MAX_MAGNITUDE * 30.0, rnd), resample=resample,
                                                        fillcolor=MEAN_FILL)),
    ('PosterizeIncreasing', _posterize),
    ('SolarizeIncreasing', lambda img, m, rnd, resample: ImageOps.solarize(img, 256 - int(m / MAX_MAGNITUDE * 256))),
    ('SolarizeAdd', lambda img, m, rnd, resample: _solarize_add(img, int(m / MAX_MAGNITUDE * 110))),
    ('ColorIncreasing', _enhance(ImageEnhance.Color)),
    ('ContrastIncreasing', _enhance(ImageEnhance.Contrast)),
    ('BrightnessIncreasing', _enhance(ImageEnhance.Brightness)),
    ('SharpnessIncreasing', _enhance(ImageEnhance.Sharpness)),
    ('ShearX', _shear('x')),
    ('ShearY', _shear('y')),
    ('TranslateXRel', _translate('x')),
    ('TranslateYRel', _translate('y')),
)


class RandAugment:
    """timm's RandAugment 'rand-m{magnitude}-mstd{magnitude_std}-inc1' on an RGB PIL image: `num_ops`
    ops drawn with replacement from RAND_AUGMENT_OPS; each applied with probability `prob`, at a
    magnitude drawn from N(magnitude, magnitude_std) and clipped to [0, 10], signed ops negated with
    probability 1/2, geometric ops resampled with `resample` and filled with MEAN_FILL."""

    def __init__(self, magnitude=9, magnitude_std=0.5, num_ops=2, prob=0.5, resample=Image.BICUBIC):
        self.magnitude, self.magnitude_std = magnitude, magnitude_std
        self.num_ops, self.prob, self.resample = num_ops, prob, resample

    def __call__(self, img, rand):
        for index in rand.np.choice(len(RAND_AUGMENT_OPS), self.num_ops):
            if self.prob < 1.0 and rand.py.random() > self.prob:
                continue
            magnitude = self.magnitude
            if self.magnitude_std > 0:
                magnitude = rand.py.gauss(magnitude, self.magnitude_std)
            magnitude = min(MAX_MAGNITUDE, max(0.0, magnitude))
            img = RAND_AUGMENT_OPS[index][1](img, magnitude, rand.py, self.resample)
        return img


# ----------------------------------------------------------------------------- random erasing
def random_erasing_box(height, width, rnd, min_area=0.02, max_area=1 / 3, min_aspect=0.3):
    """(top, left, h, w) of timm's RandomErasing box (count 1), or None: up to 10 tries of an area
    fraction uniform in [min_area, max_area] and an aspect log-uniform in [min_aspect, 1 / min_aspect],
    kept if strictly smaller than the image."""
    log_aspect = (math.log(min_aspect), math.log(1 / min_aspect))
    for _ in range(10):
        target_area = rnd.uniform(min_area, max_area) * height * width
        aspect = math.exp(rnd.uniform(*log_aspect))
        h = int(round(math.sqrt(target_area * aspect)))
        w = int(round(math.sqrt(target_area / aspect)))
        if w < width and h < height:
            return rnd.randint(0, height - h), rnd.randint(0, width - w), h, w
    return None


def random_erase_pixels(chw, rand, prob):
    """timm's RandomErasing(prob, mode='pixel', max_count=1) of a normalised (C, H, W) float32 array,
    in place: with probability `prob` a random box is filled with independent N(0, 1) values."""
    if rand.py.random() > prob:
        return chw
    box = random_erasing_box(chw.shape[1], chw.shape[2], rand.py)
    if box is not None:
        top, left, h, w = box
        chw[:, top:top + h, left:left + w] = rand.np.standard_normal((chw.shape[0], h, w)).astype(np.float32)
    return chw


# ----------------------------------------------------------------------------- the whole input
class OfficialTrainInput:
    """(encoded bytes, sample seed) -> the official recipe's augmented (3, S, S) float32 input: random
    resized crop (scale (scale_min, 1)), flip with probability hflip, RandAugment if rand_augment,
    ToTensor + Normalize, RandomErasing with probability random_erasing (see the module docstring)."""

    def __init__(self, cfg):
        self.size, self.scale_min, self.hflip = cfg.image_size, cfg.scale_min, cfg.hflip
        self.resample = PIL_RESAMPLE[cfg.interpolation]
        self.rand_augment = RandAugment(cfg.rand_magnitude, cfg.rand_magnitude_std,
                                        resample=self.resample) if cfg.rand_augment else None
        self.erasing = cfg.random_erasing

    def __call__(self, data, seed):
        rand = SampleRandom(int(seed))
        img = decode_rgb(data)
        img = resized_crop(img, random_resized_crop_box(*img.size, rand.py, scale=(self.scale_min, 1.0)),
                           self.size, self.resample)
        if self.hflip > 0 and rand.py.random() < self.hflip:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        if self.rand_augment is not None:
            img = self.rand_augment(img, rand)
        chw = normalized_chw(img)
        if self.erasing > 0:
            random_erase_pixels(chw, rand, self.erasing)
        return chw
