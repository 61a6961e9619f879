"""Model zoo: `create_model(name, num_classes=1000, features_only=False, checkpoint_path=None, **overrides)`,
`list_models()`, `model_settings(name)`, `build_model(cfg)`; weight loading in `weights.py`."""
from . import resnet, swin  # noqa: F401  (registers the models)
from .registry import (
                       InputSizeError,
                       UnknownModelError,
                       build_model,
                       create_model,
                       list_models,
                       model_settings,
                       register_model,
                       size_overrides,
)

__all__ = ['InputSizeError', 'UnknownModelError', 'build_model', 'create_model', 'list_models', 'model_settings',
           'register_model', 'size_overrides']
