"""The per-image transforms of the input pipelines: raw file bytes in, a normalised (3, S, S) float32 out.

Evaluation has two pipelines, chosen by the config key `eval_pipeline`:

* `official` (the default): the tensors the official evaluation feeds the network, bit for bit. Both
  official codes read images with PIL (`Image.open(f).convert('RGB')`, torchvision's loader) and run
  torchvision's `Resize(R)` on the short side, `CenterCrop(S)`, `ToTensor` and `Normalize` with the
  ImageNet statistics: Swin with bicubic resampling and R = int(256 / 224 * S), the ResNets with
  bilinear and R = 256 at S = 224. Here R = int(S / crop_pct), which is the same integer for
  crop_pct 0.875 and every S. PIL shrinks with a filter as wide as the reduction (antialiasing).
  Only the part of the resize that the crop keeps is computed (resize_and_center_crop), with the same
  result. The installed Pillow's resize is the reference, as it is for torchvision (Pillow 13 changed
  the order of its two passes for tall images: docs/recipes.md).
* `fast`: MindSpore's C ops (Decode, Resize, CenterCrop, ToTensor, Normalize). Faster, and not the
  official tensors: the C Resize does not antialias when it shrinks, CenterCrop rounds the offset down
  where torchvision rounds half to even, and ToTensor/Normalize round differently in the last bit.
  Published effects of the resize library alone on ImageNet top-1 are 0.1 to 1 point.
"""
import hashlib
import io
import re

import numpy as np
import PIL
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


def short_side_size(width, height, size):
    """torchvision's Resize(size) with an int size: the short side becomes `size`, the long side
    int(size * long / short) (truncated, not rounded). Returns (new_width, new_height)."""
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


def center_crop_offsets(width, height, size):
    """(left, top) of torchvision's CenterCrop(size) of an image at least size x size: the offsets round
    half to even (Python's round), so an odd margin puts the extra pixel on the top or left as often as
    not."""
    if width < size or height < size:
        raise ValueError(f'a centre crop of {size} needs an image at least that large, got {width}x{height}')
    return int(round((width - size) / 2.0)), int(round((height - size) / 2.0))


# PIL resizes in two passes, each an 8-bit image: horizontal then vertical, except that Pillow 13
# runs the vertical pass first when the height shrinks by more than twice as many pixels as the width
# (libImaging/Resample.c, ImagingResampleInner), and Pillow 12.2-12.3 (in Image.resize) for images over
# 100 times taller than wide. The two orders differ in the last bit (more with bicubic).
_PIL_MAJOR = int(PIL.__version__.split('.')[0])
_PIL_FILTER_SUPPORT = {Image.BILINEAR: 1.0, Image.BICUBIC: 2.0}  # Resample.c's filter supports


def _pil_vertical_first(width, height, new_width, new_height):
    shrink_h, shrink_w = height - new_height, width - new_width
    return _PIL_MAJOR >= 13 and shrink_h > 0 and shrink_h > 2 * shrink_w


def _pil_source_range(in_size, out_size, first, count, resample):
    """[start, stop) of the input pixels (along one axis) PIL's resize reads for output pixels
    first .. first + count - 1, as Resample.c's precompute_coeffs bounds them, one pixel wider each
    side (reading more is harmless: those pixels are real ones)."""
    scale = in_size / out_size
    support = _PIL_FILTER_SUPPORT[resample] * max(scale, 1.0)
    start = int((first + 0.5) * scale - support + 0.5)
    stop = int((first + count - 0.5) * scale + support + 0.5)
    return max(start - 1, 0), min(stop + 1, in_size)


def resize_and_center_crop(img, size, crop, resample):
    """torchvision's Resize(size) (PIL's antialiasing resize of the short side) then CenterCrop(crop)
    of an RGB or L PIL image (PIL premultiplies alpha around a resize), the same pixels bit for bit,
    computing only what the crop keeps: PIL's first pass on the rows (or columns) the crop reads, its
    second pass on the columns (rows) it keeps. Each pass is one PIL resize along one axis, with the
    coefficients of the whole image's resize; the pixels the first pass leaves out are zeros that no
    kept pixel reads. Where the pass order is not known here (Pillow after 13, and images over 100
    times longer than wide), the whole image is resized."""
    w, h = img.size
    new_w, new_h = short_side_size(w, h, size)
    left, top = center_crop_offsets(new_w, new_h, crop)
    if _PIL_MAJOR > 13 or max(w, h) > 100 * min(w, h):
        return img.resize((new_w, new_h), resample).crop((left, top, left + crop, top + crop))
    if _pil_vertical_first(w, h, new_w, new_h):
        c0, c1 = _pil_source_range(w, new_w, left, crop, resample)
        band = img.crop((c0, 0, c1, h)).resize((c1 - c0, new_h), resample)  # vertical pass, (c1 - c0) x new_h
        wide = Image.new(img.mode, (w, crop))
        wide.paste(band.crop((0, top, c1 - c0, top + crop)), (c0, 0))  # w x crop, kept rows only
        return wide.resize((new_w, crop), resample).crop((left, 0, left + crop, crop))  # horizontal pass
    r0, r1 = _pil_source_range(h, new_h, top, crop, resample)
    band = img.crop((0, r0, w, r1)).resize((new_w, r1 - r0), resample)  # horizontal pass, new_w x (r1 - r0)
    tall = Image.new(img.mode, (crop, h))
    tall.paste(band.crop((left, 0, left + crop, r1 - r0)), (0, r0))  # crop x h, kept columns only
    return tall.resize((crop, new_h), resample).crop((0, top, crop, top + crop))  # vertical pass


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
        return normalized_chw(resize_and_center_crop(decode_rgb(data), self.resize, self.image_size, self.resample))


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
