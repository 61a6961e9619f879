"""The evaluation input equals the official evaluation's, bit for bit: for every shipped config, at
224 and 384, the tensors of `build_dataset(cfg, 'val')` (and of predict's preprocessing) are those of
torchvision's pipeline that the official codes run (`pil_loader`, `Resize(R)`, `CenterCrop(S)`,
`ToTensor`, `Normalize`), on a real photograph re-encoded at ImageNet's typical sizes and in the image
modes ImageNet holds (grayscale, CMYK, palette, RGBA, progressive JPEG).

The photograph is matplotlib's sample (installed with the test extras); scikit-learn's samples would
need scikit-learn and SciPy installed for this one test.
torchvision is imported as official_code.py says.
"""
import glob
import os

import numpy as np
import pytest

import official_code
from src.config import load_config
from src.data import transforms
from src.data.imagefolder import build_dataset
from src.data.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_resize_size

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, 'config', '*.yaml')))
# width x height: ImageNet's commonest landscape and portrait sizes, the 500 x 334 and 500 x 281 whose
# centre crops have an odd margin (torchvision rounds the offset half to even), a small image that is
# enlarged, a square one, a tall one that is enlarged and one that shrinks its height by more than twice
# as many pixels as its width (which Pillow 13 resizes vertically first).
SIZES = [(500, 375), (375, 500), (500, 334), (500, 281), (200, 150), (256, 256), (180, 600), (300, 900)]


def _torchvision():
    package = official_code.torchvision()
    return package.transforms, package.datasets.folder.pil_loader


@pytest.fixture(scope='module')
def photo_folder(tmp_path_factory):
    """<root>/val/<one class per image>/<image>: the photograph at each of SIZES as a JPEG, and at
    500 x 375 in the other modes."""
    from PIL import Image
    matplotlib = pytest.importorskip('matplotlib')
    source = os.path.join(os.path.dirname(matplotlib.__file__), 'mpl-data', 'sample_data', 'grace_hopper.jpg')
    photo = Image.open(source).convert('RGB')
    root = tmp_path_factory.mktemp('photos')
    images = {f'rgb_{w}x{h}.jpg': photo.resize((w, h), Image.LANCZOS) for w, h in SIZES}
    base = photo.resize((500, 375), Image.LANCZOS)
    images.update({'gray.jpg': base.convert('L'), 'cmyk.jpg': base.convert('CMYK'),
                   'palette.png': base.convert('P'), 'rgba.png': base.convert('RGBA')})
    for i, (name, img) in enumerate(sorted(images.items())):
        folder = root / 'val' / f'c{i:02d}'
        folder.mkdir(parents=True)
        img.save(folder / name, quality=90)
    progressive = root / 'val' / f'c{len(images):02d}'
    progressive.mkdir()
    base.save(progressive / 'progressive.jpg', quality=85, progressive=True)
    return str(root)


def _official_inputs(files, cfg):
    """What the official evaluation feeds the network for each file (torchvision over PIL)."""
    transforms, pil_loader = _torchvision()
    interpolation = {'bilinear': transforms.InterpolationMode.BILINEAR,
                     'bicubic': transforms.InterpolationMode.BICUBIC}[cfg.interpolation]
    pipeline = transforms.Compose([
        transforms.Resize(eval_resize_size(cfg.image_size, cfg.crop_pct), interpolation=interpolation),
        transforms.CenterCrop(cfg.image_size), transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    return [pipeline(pil_loader(path)).numpy() for path in files]


def _config(path, data_dir, image_size, **overrides):
    return load_config(path, {'data_dir': data_dir, 'image_size': image_size, 'num_classes': 1000,
                              'num_workers': 2, 'eval_batch_size': 5, **overrides})


def _eval_inputs(cfg):
    batches = build_dataset(cfg, 'val').create_tuple_iterator(output_numpy=True)
    return np.concatenate([images for images, _ in batches])


def _files(data_dir):
    return sorted(glob.glob(os.path.join(data_dir, 'val', '*', '*')))


def _protocols():
    """The distinct evaluation protocols (interpolation, crop_pct) of the shipped configs, with a
    config that has each."""
    found = {}
    for path in CONFIGS:
        cfg = load_config(path, {})
        found.setdefault((cfg.interpolation, cfg.crop_pct), path)
    return found


@pytest.mark.parametrize('image_size', [224, 384])
@pytest.mark.parametrize('protocol', sorted(_protocols()), ids=lambda p: f'{p[0]}-{p[1]}')
def test_evaluation_input_is_the_official_pipelines_bit_for_bit(photo_folder, protocol, image_size):
    cfg = _config(_protocols()[protocol], photo_folder, image_size)
    assert cfg.eval_pipeline == 'official'  # the default
    got, want = _eval_inputs(cfg), _official_inputs(_files(photo_folder), cfg)
    assert got.shape == (len(want), 3, image_size, image_size) and got.dtype == np.float32
    for path, g, w in zip(_files(photo_folder), got, want):
        np.testing.assert_array_equal(g, w, err_msg=os.path.basename(path))


def test_the_shipped_imagenet_configs_evaluate_as_the_official_codes():
    """Swin: bicubic, short side int(256 / 224 * S); ResNet: bilinear, 256 at 224."""
    for path in CONFIGS:
        cfg = load_config(path, {})
        if cfg.num_classes != 1000:
            continue
        family = 'swin' if 'swin' in cfg.arch else 'resnet'
        assert cfg.interpolation == {'swin': 'bicubic', 'resnet': 'bilinear'}[family], path
        assert cfg.eval_pipeline == 'official', path
        for size in (224, 384):
            assert eval_resize_size(size, cfg.crop_pct) == int((256 / 224) * size), path


def test_the_resize_size_is_the_official_formula_at_every_size():
    assert all(eval_resize_size(s, 0.875) == int((256 / 224) * s) for s in range(8, 2049))
    assert (eval_resize_size(224, 0.875), eval_resize_size(384, 0.875)) == (256, 438)
    assert eval_resize_size(32, 1.0) == 32


def test_predict_prepares_an_image_as_the_evaluation_does(photo_folder):
    from src.tools.predict import preprocess
    cfg = _config(_protocols()[('bicubic', 0.875)], photo_folder, 224)
    files = [f for f in _files(photo_folder) if os.path.basename(f) in ('rgb_500x334.jpg', 'cmyk.jpg')]
    for path, want in zip(files, _official_inputs(files, cfg)):
        np.testing.assert_array_equal(preprocess(cfg, path), want, err_msg=os.path.basename(path))


def test_the_fast_pipeline_is_close_to_the_official_one_but_not_equal(photo_folder):
    """eval_pipeline: fast (MindSpore's C ops) is documented as another pipeline: it does not
    antialias when it shrinks, and its crop sits a pixel off where the margin is odd."""
    cfg = _config(_protocols()[('bicubic', 0.875)], photo_folder, 224, eval_pipeline='fast')
    got, want = _eval_inputs(cfg), np.stack(_official_inputs(_files(photo_folder), cfg))
    difference = np.abs(got - want).mean(axis=(1, 2, 3))  # per image, in normalised units
    assert not np.array_equal(got, want)
    assert difference.max() < 0.25, difference


@pytest.mark.parametrize('interpolation', ['bilinear', 'bicubic'])
def test_resizing_only_what_the_crop_keeps_is_the_whole_resize_bit_for_bit(interpolation):
    """resize_and_center_crop against PIL's resize of the whole image then the crop, on noise (every
    coefficient of both passes matters) at 300 random sizes, shrunk and enlarged, both pass orders."""
    from PIL import Image
    resample = {'bilinear': Image.BILINEAR, 'bicubic': Image.BICUBIC}[interpolation]
    rng = np.random.default_rng(0)
    orders = set()
    for _ in range(300):
        w, h = (int(v) for v in rng.integers(130, 1000, size=2))
        size, crop = [(256, 224), (438, 384), (329, 288), (146, 128)][rng.integers(4)]
        new_w, new_h = transforms.short_side_size(w, h, size)
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        left, top = transforms.center_crop_offsets(new_w, new_h, crop)
        whole = img.resize((new_w, new_h), resample).crop((left, top, left + crop, top + crop))
        np.testing.assert_array_equal(np.asarray(transforms.resize_and_center_crop(img, size, crop, resample)),
                                      np.asarray(whole), err_msg=f'{w}x{h} -> {size}, crop {crop}')
        orders.add(h - new_h > max(0, 2 * (w - new_w)))  # Pillow 13's vertical-first rule
    assert orders == {True, False}
