"""The per-image transforms of the input pipelines: raw file bytes in, a normalised (3, S, S) float32 out.

Evaluation has two pipelines, chosen by the config key `eval_pipeline`:

* `official` (the default): the tensors the official evaluation feeds the network, bit for bit. Both
  official codes read images with PIL (`Image.open(f).convert('RGB')`, torchvision's loader) and run
  torchvision's `Resize(R)` on the short side, `CenterCrop(S)`, `ToTensor` and `Normalize` with the
  ImageNet statistics: Swin with bicubic resampling and R = int(256 / 224 * S), the ResNets with
  bilinear and R = 256 at S = 224. Here R = int(S / crop_pct), which is the same integer for
  crop_pct 0.875 and every S. PIL shrinks with a filter as wide as the reduction (antialiasing).
* `fast`: MindSpore's C ops (Decode, Resize, CenterCrop, ToTensor, Normalize). Faster, and not the
  official tensors: the C Resize does not antialias when it shrinks, CenterCrop rounds the offset down
  where torchvision rounds half to even, and ToTensor/Normalize round differently in the last bit.
  Published effects of the resize library alone on ImageNet top-1 are 0.1 to 1 point.
"""
import hashlib
import io
import re

import numpy as np
from mindspore.dataset import vision
from mindspore.dataset.vision import Inter
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EVAL_PIPELINES = ('official', 'fast')
PIL_RESAMPLE = {'bilinear': Image.BILINEAR, 'bicubic': Image.BICUBIC}
_C_INTER = {'bilinear': Inter.BILINEAR, 'bicubic': Inter.BICUBIC}


def eval_resize_size(image_size, crop_pct):
    """The short side the evaluation resizes to before its centre crop of image_size."""
    return int(image_size / crop_pct)


class UndecodableImage(OSError):
    """PIL cannot read an image. Its message carries the size and SHA-1 of the bytes: a Python op in a
    MindSpore pipeline gets the bytes, not the file, and the error is found again by its content
    (imagefolder.readable_images reads them back with PATTERN)."""
    PATTERN = re.compile(r'undecodable image of (\d+) bytes, sha1 ([0-9a-f]{40})')

    @classmethod
    def of(cls, raw, reason):
        # built with the message alone: MindSpore re-creates an exception raised in a Python op from it
        return cls(f'undecodable image of {len(raw)} bytes, sha1 {hashlib.sha1(raw).hexdigest()} ({reason})')


def decode_rgb(data):
    """Encoded image bytes (a uint8 array) -> an RGB PIL image, as torchvision's loader reads a file:
    grayscale, palette, CMYK and RGBA (alpha dropped) become RGB by PIL's convert('RGB')."""
    raw = data.tobytes() if isinstance(data, np.ndarray) else data
    try:
        img = Image.open(io.BytesIO(raw))
        img.load()
    except (OSError, SyntaxError, ValueError) as err:  # what PIL raises for unknown, truncated or broken files
        raise UndecodableImage.of(raw, err) from None
    return img if img.mode == 'RGB' else img.convert('RGB')  # convert('RGB') of an RGB image is a copy


def resize_short_side(img, size, resample):
    """torchvision's Resize(size) with an int size on a PIL image: the short side becomes `size`, the
    long side int(size * long / short) (truncated, not rounded)."""
    w, h = img.size
    if w <= h:
        new_w, new_h = size, int(size * h / w)
    else:
        new_w, new_h = int(size * w / h), size
    return img.resize((new_w, new_h), resample)


def center_crop(img, size):
    """torchvision's CenterCrop(size) of an image at least size x size: the offsets round half to even
    (Python's round), so an odd margin puts the extra pixel on the top or left as often as not."""
    w, h = img.size
    if w < size or h < size:
        raise ValueError(f'a centre crop of {size} needs an image at least that large, got {w}x{h}')
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


# torchvision's ToTensor then Normalize maps a pixel value v of channel c to (v / 255 - mean_c) / std_c,
# each step a float32 division or subtraction. There are 256 values per channel: the table holds each
# result, computed in that order in float32, and normalising is a lookup.
_NORMALIZED = ((np.arange(256, dtype=np.float32)[None, :] / np.float32(255))
               - np.array(IMAGENET_MEAN, np.float32)[:, None]) / np.array(IMAGENET_STD, np.float32)[:, None]  # (3, 256)


def normalized_chw(img):
    """torchvision's ToTensor then Normalize(IMAGENET_MEAN, IMAGENET_STD) of an RGB image: (3, H, W) float32."""
    pixels = np.asarray(img)  # (H, W, 3) uint8
    out = np.empty((3,) + pixels.shape[:2], np.float32)  # (3, H, W)
    for c in range(3):
        np.take(_NORMALIZED[c], pixels[..., c], out=out[c])
    return out


class OfficialEvalInput:
    """Encoded bytes -> the official evaluation's (3, S, S) float32 input (see the module docstring)."""

    def __init__(self, image_size, crop_pct, interpolation):
        self.image_size = image_size
        self.resize = eval_resize_size(image_size, crop_pct)
        self.resample = PIL_RESAMPLE[interpolation]

    def __call__(self, data):
        img = resize_short_side(decode_rgb(data), self.resize, self.resample)
        return normalized_chw(center_crop(img, self.image_size))


def eval_transforms(cfg):
    """The evaluation transforms of `cfg.eval_pipeline`, a list of callables applied in order to the raw
    bytes of one image file (as `Dataset.map` applies them, or one after another for one file)."""
    if cfg.eval_pipeline == 'official':
        return [OfficialEvalInput(cfg.image_size, cfg.crop_pct, cfg.interpolation)]
    resize = eval_resize_size(cfg.image_size, cfg.crop_pct)
    return [vision.Decode(), vision.Resize(resize, interpolation=_C_INTER[cfg.interpolation]),
            vision.CenterCrop(cfg.image_size), vision.ToTensor(),
            vision.Normalize(IMAGENET_MEAN, IMAGENET_STD, is_hwc=False)]


def fast_train_transforms(cfg):
    """The training augmentation of `train_pipeline: fast`, MindSpore's C ops: faster than the official
    one (augment.py) and not the same: the crop's resize does not antialias, RandAugment reads the
    magnitude as bin m of 31 (about a third of timm's strength at 9), always applies both ops, has
    another op list and no magnitude noise, and RandomErasing fills with zeros."""
    inter = _C_INTER[cfg.interpolation]
    ops = [vision.Decode(), vision.RandomResizedCrop(cfg.image_size, scale=(cfg.scale_min, 1.0), interpolation=inter)]
    if cfg.hflip > 0:
        ops.append(vision.RandomHorizontalFlip(cfg.hflip))
    if cfg.rand_augment:
        ops.append(vision.RandAugment(num_ops=2, magnitude=cfg.rand_magnitude))
    ops += [vision.ToTensor(), vision.Normalize(IMAGENET_MEAN, IMAGENET_STD, is_hwc=False)]
    if cfg.random_erasing > 0:
        ops.append(vision.RandomErasing(prob=cfg.random_erasing))
    return ops
