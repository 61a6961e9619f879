"""Model registry: `create_model(name, num_classes=1000, **overrides)` and `list_models()`."""
import difflib

_MODEL_FNS = {}


class UnknownModelError(ValueError):
    """No model is registered under that name."""


class InputSizeError(ValueError):
    """The model cannot take inputs of this size; the message names sizes that work."""

_SIZED_MODELS = set()


def register_model(fn=None, *, sized=False):
    """Register a model factory under its function name. `sized=True` marks models built for one
    input size, whose factory takes `img_size` (Swin: masks and windows are fixed at build time)."""
    def register(fn):
        if fn.__name__ in _MODEL_FNS:
            raise ValueError(f'model {fn.__name__!r} is registered twice')
        _MODEL_FNS[fn.__name__] = fn
        if sized:
            _SIZED_MODELS.add(fn.__name__)
        return fn
    return register(fn) if fn is not None else register


def size_overrides(name, image_size):
    """The create_model overrides that make `name` take square inputs of `image_size`."""
    return {'img_size': image_size} if name in _SIZED_MODELS else {}


def list_models():
    """Names of all registered models, sorted."""
    return sorted(_MODEL_FNS)


def create_model(name, num_classes=1000, **overrides):
    """Build a registered model. `overrides` are passed to the model's constructor
    (e.g. img_size=448 for Swin, drop_path_rate=0.3, paths='attention')."""
    if name not in _MODEL_FNS:
        close = difflib.get_close_matches(name, list(_MODEL_FNS), n=3)
        hint = f' Did you mean {", ".join(close)}?' if close else ''
        raise UnknownModelError(f'unknown model {name!r}.{hint} Available: {", ".join(list_models())}')
    return _MODEL_FNS[name](num_classes=num_classes, **overrides)
