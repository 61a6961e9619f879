"""The official recipes' own Python code, imported for use as test references: torchvision's
transforms and timm 0.3.2's files (the versions the official code ran with); and the official
checkpoint files' layouts, written from a model of src/tools/official_reference.py. A test that needs one
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


# ----------------------------------------------------------------------------- official checkpoint files
class CfgNode(dict):
    """Stands for yacs.config.CfgNode, the config object the official Swin training script saves in its
    checkpoints (pickled under that module and class name by write_pth_layouts). Constructing it records
    that it was constructed: a reader that runs what a .pth names would do so."""
    constructed = []

    def __new__(cls, *args, **kwargs):  # unpickling a dict subclass calls it (NEWOBJ), not __init__
        CfgNode.constructed.append(cls)
        return super().__new__(cls, *args, **kwargs)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.__dict__['immutable'] = False  # yacs keeps such flags in the instance, pickled as its state


def write_pth_layouts(model, folder):
    """The four layouts an official .pth comes in, with the weights of `model` (an official Swin of
    src/tools/official_reference.py built for 32-px inputs): {layout: path}. 'bare': the state_dict; 'model':
    {'model': state_dict} (the released Swin-ACmix files); 'module': {'state_dict': state_dict with
    'module.' prefixes} (the official ResNet script, DataParallel); 'training': what the official Swin
    main.py saves (model, AdamW state, scheduler state, max_accuracy, epoch and the yacs config,
    pickled as yacs.config.CfgNode)."""
    import torch
    state_dict = model.state_dict()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.zeros(1, 3, 32, 32)).sum().backward()
    optimizer.step()
    config = CfgNode({'MODEL': CfgNode({'TYPE': 'swin_acmix', 'NAME': 'acmix_swin_tiny'}), 'TRAIN': {'EPOCHS': 300}})
    layouts = {
        'bare': state_dict,
        'model': {'model': state_dict},
        'module': {'state_dict': {'module.' + k: v for k, v in state_dict.items()}},
        'training': {'model': state_dict, 'optimizer': optimizer.state_dict(),
                     'lr_scheduler': {'t_initial': 1000, 'lr_min': 5e-6}, 'max_accuracy': 81.9, 'epoch': 299,
                     'config': config},
    }
    yacs, yacs_config = types.ModuleType('yacs'), types.ModuleType('yacs.config')
    yacs_config.CfgNode = CfgNode
    saved = {name: sys.modules.get(name) for name in ('yacs', 'yacs.config')}
    CfgNode.__module__, CfgNode.__qualname__ = 'yacs.config', 'CfgNode'
    sys.modules.update({'yacs': yacs, 'yacs.config': yacs_config})
    try:
        paths = {}
        for layout, obj in layouts.items():
            paths[layout] = os.path.join(folder, f'{layout}.pth')
            torch.save(obj, paths[layout])
    finally:
        CfgNode.__module__, CfgNode.__qualname__ = __name__, 'CfgNode'
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
    CfgNode.constructed.clear()
    return paths
