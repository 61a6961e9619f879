"""The official recipes' own Python code, imported for use as test references: torchvision's
transforms and timm 0.3.2's files (the versions the official code ran with). A test that needs one
that is not installed is skipped (run_tests.sh installs torch, torchvision 0.28 and timm 0.3.2).

torchvision 0.28 installs beside the tests' torch 2.13 (CPU build), but its import stops at
registering its C++ operators (`torch.library.register_fake` of torchvision::nms, built for another
torch); its transforms are pure Python over PIL, so it is imported with that registration made a
no-op for the duration of the import.

timm 0.3.2 does not import beside torch 2.13 (its models need torch._six), and its data and scheduler
files need only torch, torchvision and PIL: a file is loaded from the installed package on its own,
as a module of a stand-in package for its folder, without running timm/__init__.py.
"""
import importlib
import importlib.util
import os
import sys
import types

import pytest


def torchvision():
    """The torchvision package (its transforms usable, its C++ operators not)."""
    torch = pytest.importorskip('torch')
    if 'torchvision' in sys.modules:
        return sys.modules['torchvision']
    register_fake = torch.library.register_fake
    torch.library.register_fake = lambda *args, **kwargs: (lambda fn: fn)
    try:
        import torchvision as package
        import torchvision.datasets.folder  # noqa: F401 (pil_loader, the official image reader)
        import torchvision.transforms  # noqa: F401
    except ImportError:
        pytest.skip('torchvision is not installed (run_tests.sh installs it with torch)')
    finally:
        torch.library.register_fake = register_fake
    return package


def timm_file(folder, name):
    """timm's `<folder>/<name>.py` (e.g. 'data', 'auto_augment') as a module."""
    pytest.importorskip('torch')
    spec = importlib.util.find_spec('timm')
    if spec is None:
        pytest.skip('timm is not installed (run_tests.sh installs timm 0.3.2 with torch)')
    if folder == 'data':
        torchvision()  # timm's data files import torchvision
    package_name = f'timm_{folder}_files'
    if package_name not in sys.modules:
        package = types.ModuleType(package_name)
        package.__path__ = [os.path.join(os.path.dirname(spec.origin), folder)]
        sys.modules[package_name] = package
    return importlib.import_module(f'{package_name}.{name}')
