"""Shared test set-up: CPU, graph mode (the project's default), fixed seeds."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import src  # noqa: E402,F401  (sets oneDNN/GLOG defaults before MindSpore loads)

# isort: split
import mindspore as ms  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from src.engine.context import use_device  # noqa: E402

ms.set_context(mode=ms.GRAPH_MODE)
use_device('CPU')  # as the entry points set it up


@pytest.fixture(params=['cpu', 'portable'])
def formulation(request):
    """Layers built in the test with formulation=... run the CPU-tuned forms or the portable ones."""
    return request.param


@pytest.fixture(autouse=True)
def _seed():
    ms.set_seed(0)
    np.random.seed(0)


def write_tiny_imagefolder(root, classes=3, train_per_class=8, val_per_class=4, size=32, seed=0):
    """A learnable tiny dataset: each class is a noisy image of its own colour, as PNG files in
    root/{train,val}/<class>/."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    colours = rng.integers(30, 225, size=(classes, 3))
    for split, n in (('train', train_per_class), ('val', val_per_class)):
        for c in range(classes):
            folder = os.path.join(root, split, f'class_{c}')
            os.makedirs(folder, exist_ok=True)
            for i in range(n):
                img = np.clip(colours[c] + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(os.path.join(folder, f'{i}.png'))
    return root


@pytest.fixture(scope='session')
def tiny_imagefolder(tmp_path_factory):
    return write_tiny_imagefolder(str(tmp_path_factory.mktemp('tiny_imagefolder')))


def train_command(data_dir, output_dir, *extra):
    """train.py's command line for a fast CPU run of resnet_mini on the tiny dataset; `extra`: more
    --key value pairs."""
    return [sys.executable, 'train.py', '--arch', 'resnet_mini', '--num_classes', '3', '--image_size', '32',
            '--data_dir', str(data_dir), '--output_dir', str(output_dir), '--batch_size', '8', '--num_workers', '1',
            '--crop_pct', '1.0', '--warmup_epochs', '0', '--eval_interval', '0', '--log_interval', '1',
            *map(str, extra)]


def tiny_config(data_dir, output_dir, **overrides):
    """A config for fast CPU runs on the tiny dataset."""
    from src.config import load_config
    values = dict(arch='resnet_mini', num_classes=3, image_size=32, data_dir=data_dir, batch_size=8,
                  eval_batch_size=5, num_workers=1, crop_pct=1.0, hflip=0.0, scale_min=0.8, lr=0.8,
                  lr_base_batch=256, epochs=2, warmup_epochs=0, output_dir=str(output_dir), log_interval=1,
                  label_smoothing=0.0)
    values.update(overrides)
    return load_config(None, values)


def error_lines(stderr):
    return [line for line in stderr.splitlines() if line.startswith('error:')]


def assert_bad_input(code, err, starts='error: '):
    """The entry points' rule for bad input: exit code 2 and one line `error: ...` (starting with
    `starts`), no traceback."""
    assert code == 2, (code, err)
    lines = error_lines(err)
    assert len(lines) == 1, err
    assert lines[0].startswith(starts) and 'Traceback' not in err, err
