"""Shared test set-up: CPU, graph mode (the project's default), fixed seeds; under pytest-xdist, tests
marked all_cpus run while no other test does."""
import fcntl
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


def pytest_configure(config):
    config.addinivalue_line('markers', 'slow: left out of the inner loop (scripts/run_tests.sh --fast); CI runs it')
    config.addinivalue_line('markers', 'all_cpus: starts processes that keep every CPU busy (msrun workers): '
                                       'under pytest-xdist it runs while no other test does')
    config.addinivalue_line('markers', 'long: one of the longest tests (the audit of a whole model); collected first')


def pytest_collection_modifyitems(items):
    """The tests marked all_cpus first, then those marked long, then the rest in their order. Under
    pytest-xdist (worksteal), the first worker's share starts with them: an all_cpus test then waits
    for one short test of the other worker before it has the CPUs, not for a long one; and a worker
    out of tests takes some from the end of another's share, so no worker runs a long test alone at
    the end of the run."""
    items.sort(key=lambda item: (item.get_closest_marker('all_cpus') is None, item.get_closest_marker('long') is None))


@pytest.fixture(autouse=True)
def _cpu_share(request, tmp_path_factory):
    """Under pytest-xdist (scripts/run_tests.sh runs a worker per CPU), a test marked all_cpus holds the
    CPUs alone: every test holds a shared lock on a file all workers see, an all_cpus test an exclusive
    one. A second lock, the gate, is taken before either and kept by an all_cpus test while it runs,
    so that a worker waiting for the CPUs is not overtaken by the other workers' next tests."""
    if 'PYTEST_XDIST_WORKER' not in os.environ:
        yield
        return
    folder = tmp_path_factory.getbasetemp().parent  # the run's folder, above each worker's own
    exclusive = request.node.get_closest_marker('all_cpus') is not None
    with open(folder / 'cpus.gate', 'a') as gate, open(folder / 'cpus.lock', 'a') as cpus:
        fcntl.flock(gate, fcntl.LOCK_EX)
        fcntl.flock(cpus, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        if not exclusive:
            fcntl.flock(gate, fcntl.LOCK_UN)
        yield  # the locks go with the files


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
