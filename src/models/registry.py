"""Model registry: `create_model(name, num_classes=1000, features_only=False, checkpoint_path=None,
**overrides)`, `list_models()`, `model_settings(name)`, and `build_model(cfg)`, the model a run's
configuration describes."""
import difflib

from ..errors import UserError
from .weights import load_weights

_MODEL_FNS = {}


class UnknownModelError(UserError):
    """No model is registered under that name."""


class InputSizeError(UserError):
    """The model cannot take inputs of this size; the message names sizes that work."""


_SIZED_MODELS = set()
_SETTINGS = {}


def register_model(fn=None, *, sized=False, settings=None):
    """Register a model factory under its function name. `sized=True` marks models built for one
    input size, whose factory takes `img_size` (Swin: masks and windows are fixed at build time).
    `settings`: the constructor arguments that make the architecture (depths, widths, ...):
    create_model passes them to the factory, the caller's overrides on top (model_settings reads them)."""
    def register(fn):
        if fn.__name__ in _MODEL_FNS:
            raise ValueError(f'model {fn.__name__!r} is registered twice')
        _MODEL_FNS[fn.__name__] = fn
        _SETTINGS[fn.__name__] = dict(settings or {})
        if sized:
            _SIZED_MODELS.add(fn.__name__)
        return fn
    return register(fn) if fn is not None else register


def _check_registered(name):
    if name not in _MODEL_FNS:
        close = difflib.get_close_matches(name, list(_MODEL_FNS), n=3)
        hint = f' Did you mean {", ".join(close)}?' if close else ''
        raise UnknownModelError(f'unknown model {name!r}.{hint} Available: {", ".join(list_models())}')


def model_settings(name):
    """The constructor arguments registered with model `name` (a copy), e.g. for a tool that builds
    the same architecture elsewhere."""
    _check_registered(name)
    return dict(_SETTINGS[name])


def size_overrides(name, image_size):
    """The create_model overrides that make `name` take square inputs of `image_size`."""
    return {'img_size': image_size} if name in _SIZED_MODELS else {}


def list_models():
    """Names of all registered models, sorted."""
    return sorted(_MODEL_FNS)


def create_model(name, num_classes=1000, features_only=False, out_indices=(0, 1, 2, 3), checkpoint_path=None,
                 **overrides):
    """Build a registered model.

    features_only: a backbone whose construct returns a tuple of NCHW feature maps, one per stage
        in `out_indices` (0 is the first stage), described by its `feature_info`; no classifier.
    out_indices: the stages a features_only model returns.
    checkpoint_path: a MindSpore .ckpt or an official .pth (needs torch) loaded strictly, without
        the classifier in features_only mode; Swin bias tables of another window size are resized
        (see src/models/weights.py).
    overrides: passed to the model's constructor (e.g. img_size=(480, 640) for Swin,
        drop_path_rate=0.3, paths='attention').
    """
    _check_registered(name)
    if features_only:
        overrides.update(features_only=True, out_indices=out_indices)
    net = _MODEL_FNS[name](num_classes=num_classes, **{**_SETTINGS[name], **overrides})
    if checkpoint_path is not None:
        load_weights(net, checkpoint_path, resize_windows=True)
    return net


def build_model(cfg):
    """The model of a run's configuration (any object with the config keys as attributes: arch,
    num_classes, image_size, drop_path_rate, model_overrides), checked against its image size so
    that a size the model cannot take fails before any data is read."""
    overrides = dict(cfg.model_overrides)
    # a run trains and evaluates classifiers; its weights come from --pretrained / --checkpoint
    reserved = sorted(set(overrides) & {'features_only', 'out_indices', 'checkpoint_path', 'num_classes'})
    if reserved:
        raise UserError(f'model_overrides cannot set {", ".join(reserved)}: a run builds a classifier '
                        '(num_classes is its own key) and loads weights from pretrained or checkpoint')
    overrides.update(size_overrides(cfg.arch, cfg.image_size))
    if cfg.drop_path_rate is not None:
        overrides['drop_path_rate'] = cfg.drop_path_rate
    net = create_model(cfg.arch, num_classes=cfg.num_classes, **overrides)
    if hasattr(net, 'check_input_size'):
        net.check_input_size(cfg.image_size)
    return net
