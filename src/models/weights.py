"""Weights into a model: strict loading of MindSpore checkpoints and official PyTorch .pth files, and
the adaptations a checkpoint needs for a model built differently from the one it was saved from
(a Swin with another window size, a backbone without its classifier).

Strict means every parameter of the model is in the file with its shape, and nothing else is, except
what the model itself declares: `net.checkpoint_skip_prefixes` (checkpoint entries it has no use for,
e.g. the classifier of a features_only backbone) and `net.optional_checkpoint_prefixes` (its own
parameters a classification checkpoint cannot have, e.g. the per-output LayerNorms of a Swin backbone,
which then keep their initial values as in the official detection code).
"""
import os

import mindspore as ms
import numpy as np

from ..errors import UserError

# Training checkpoints keep the optimizer state and scalar metadata beside the weights, under these
# prefixes, so that the same file loads into a bare network for evaluation and export.
OPTIMIZER_PREFIX = 'optimizer.'
META_PREFIX = 'meta.'
# The weight EMA of a training checkpoint: the averaged parameters under their own names, prefixed.
EMA_PREFIX = 'ema.'
TRAINING_EXTRAS = (OPTIMIZER_PREFIX, META_PREFIX, EMA_PREFIX)
PTH_SUFFIXES = ('.pth', '.pt', '.pth.tar')
# Buffers of the official models that are constants here (built in __init__, not parameters).
IGNORED_PTH_LEAVES = ('num_batches_tracked', 'relative_position_index', 'attn_mask')
# torch leaf name -> candidate MindSpore leaf names (Conv/Dense keep weight/bias, norms use gamma/beta).
LEAF_CANDIDATES = {
    'weight': ('weight', 'gamma'),
    'bias': ('bias', 'beta'),
    'running_mean': ('moving_mean',),
    'running_var': ('moving_variance',),
}
BIAS_TABLE = 'relative_position_bias_table'


class CheckpointMismatchError(UserError):
    """A checkpoint does not fit the network it is loaded into."""


class CheckpointReadError(UserError):
    """A checkpoint file cannot be read at all."""


class ConversionError(UserError):
    """A .pth file cannot be converted for this architecture."""


def read_checkpoint(path):
    """{name: Parameter} of a checkpoint file; CheckpointReadError if it cannot be read
    (truncated, damaged, empty or not a MindSpore checkpoint). Files saved without a CRC load too."""
    if not os.path.isfile(path):
        raise CheckpointReadError(f'checkpoint not found: {path}')
    try:
        return ms.load_checkpoint(path, crc_check=True)
    except (ValueError, RuntimeError, OSError, TypeError):
        # MindSpore's own message guesses at permissions; the size tells truncated from empty.
        raise CheckpointReadError(f'cannot read the checkpoint {path} ({os.path.getsize(path)} bytes): it is '
                                  'truncated, damaged or not a MindSpore checkpoint') from None


def describe_mismatch(missing, unexpected, mismatched=(), limit=20):
    """A readable list of mismatched checkpoint keys."""
    lines = []
    for title, keys in (('missing from the checkpoint', missing), ('unexpected in the checkpoint', unexpected),
                        ('with the wrong shape', mismatched)):
        if keys:
            shown = ', '.join(keys[:limit]) + (f', ... ({len(keys) - limit} more)' if len(keys) > limit else '')
            lines.append(f'  {len(keys)} {title}: {shown}')
    return '\n'.join(lines)


def _starts(name, prefixes):
    return bool(prefixes) and name.startswith(tuple(prefixes))


def load_checkpoint_strict(net, path_or_dict, skip_prefixes=(), optional_prefixes=()):
    """Load a checkpoint into `net`, raising CheckpointMismatchError if any parameter is missing,
    unexpected or of the wrong shape (ms.load_param_into_net itself only returns the lists).

    path_or_dict: a .ckpt path or {name: Parameter, Tensor or ndarray}.
    skip_prefixes: parameter-name prefixes that are neither loaded nor required, e.g. ('fc.',)
    to fine-tune with a new classifier head.
    optional_prefixes: parameters of `net` that are loaded if the checkpoint has them and otherwise
    keep their values.
    """
    params = read_checkpoint(path_or_dict) if isinstance(path_or_dict, str) else dict(path_or_dict)
    own = {p.name: p for p in net.get_parameters() if not _starts(p.name, skip_prefixes)}
    # Optimizer state, metadata and EMA weights of training checkpoints are not the network's (unless
    # the network is the EMA's own, whose parameters carry the prefix).
    params = {k: v for k, v in params.items()
              if not (k.startswith(TRAINING_EXTRAS) and k not in own) and not _starts(k, skip_prefixes)}
    mismatched = [f'{k} {tuple(v.shape)} vs {tuple(own[k].shape)}' for k, v in params.items()
                  if k in own and tuple(v.shape) != tuple(own[k].shape)]
    missing = [k for k in own if k not in params and not _starts(k, optional_prefixes)]
    unexpected = [k for k in params if k not in own]
    if missing or unexpected or mismatched:
        raise CheckpointMismatchError('checkpoint does not match the network:\n'
                                      + describe_mismatch(missing, unexpected, mismatched))
    weights = {k: v if isinstance(v, ms.Parameter) else ms.Parameter(ms.Tensor(np.asarray(v)), name=k)
               for k, v in params.items()}
    not_loaded, _ = ms.load_param_into_net(net, weights, strict_load=True)
    not_loaded = [k for k in not_loaded if k in weights]
    if not_loaded:
        raise CheckpointMismatchError('parameters not loaded: ' + ', '.join(not_loaded))
    return net


# ----------------------------------------------------------------------------- official .pth files
class OpaqueObject(dict):
    """What a .pth reader makes of a pickled object of any class but tensors and plain containers (a
    training script's config object, its optimizer's or scheduler's classes, or code a malicious file
    would run): nothing is imported or constructed; the arguments and state the file gives it are kept
    as data, under the name of the class it stands for."""
    pickled_as = '?'

    def __init__(self, *args, **kwargs):  # pickle's REDUCE and NEWOBJ pass whatever the file holds
        super().__init__()
        self.__dict__['args'] = args

    def __setstate__(self, state):  # BUILD
        self.__dict__['state'] = state

    def append(self, item):  # APPEND(S), for a pickled list subclass
        self.__dict__.setdefault('items', []).append(item)

    def extend(self, items):
        self.__dict__.setdefault('items', []).extend(items)

    def __repr__(self):
        return f'<{self.pickled_as}, not constructed>'


def extract_state_dict(obj):
    """The state_dict inside a loaded .pth object, with any 'module.' prefix removed."""
    if isinstance(obj, dict):
        for key in ('model', 'state_dict'):
            if key in obj and isinstance(obj[key], dict) and not isinstance(obj[key], OpaqueObject):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or isinstance(obj, OpaqueObject) or not obj:
        raise ConversionError('no state_dict found: expected a state_dict, {"model": ...} or {"state_dict": ...}')
    out = {}
    for key, value in obj.items():
        if isinstance(value, OpaqueObject):
            raise ConversionError(f'the state_dict entry {key!r} is a {value.pickled_as} object, not a tensor')
        name = key[len('module.'):] if key.startswith('module.') else key
        out[name] = _to_numpy(value)
    return out


def _to_numpy(value):
    if hasattr(value, 'detach'):  # torch.Tensor, without importing torch here
        value = value.detach().cpu()
        return value.float().numpy() if value.is_floating_point() else value.numpy()
    return np.asarray(value)


# The globals a .pth file of tensors needs (torch's own loader resolves the storage classes first).
_PTH_GLOBALS = {('collections', 'OrderedDict'), ('torch._utils', '_rebuild_tensor_v2'),
                ('torch._utils', '_rebuild_tensor'), ('torch._utils', '_rebuild_parameter'),
                ('torch._utils', '_rebuild_parameter_with_state'), ('torch', 'Size'), ('torch', 'device')}


def _tensors_only_pickle_module():
    """A pickle module for torch.load whose unpickler constructs tensors and plain containers only:
    every other global is an OpaqueObject subclass named after it (see OpaqueObject)."""
    import pickle
    import types

    import torch

    class Unpickler(pickle.Unpickler):
        def find_class(self, module, name):
            if (module, name) in _PTH_GLOBALS or (module == 'torch' and isinstance(getattr(torch, name, None),
                                                                                    torch.dtype)):
                return super().find_class(module, name)
            return type(name, (OpaqueObject,), {'pickled_as': f'{module}.{name}'})

    tensors_only = types.ModuleType('acmix_tensors_only_pickle')
    tensors_only.Unpickler = Unpickler
    tensors_only.load = lambda file, **kwargs: Unpickler(file, **kwargs).load()  # torch's legacy format
    return tensors_only


def load_pth(path):
    """Read a .pth file into {name: ndarray}. Needs torch. Tensors and plain containers are read;
    anything else the file holds (a training checkpoint's config object, say) is an OpaqueObject,
    never constructed, so no code the file names is run."""
    try:
        import torch
    except ImportError as err:
        raise ConversionError('reading a .pth file needs PyTorch: pip install torch==2.13.0') from err
    try:
        obj = torch.load(path, map_location='cpu', weights_only=False, pickle_module=_tensors_only_pickle_module())
    except FileNotFoundError as err:
        raise ConversionError(f'no such file: {path}') from err
    except Exception as err:  # a file torch cannot read: not a checkpoint, truncated
        raise ConversionError(f'cannot read {path} as a PyTorch checkpoint ({type(err).__name__}: '
                              f'{str(err)[:200]})') from err
    return extract_state_dict(obj)


def map_key(key, param_names):
    """The MindSpore parameter name for a torch key, or None."""
    prefix, _, leaf = key.rpartition('.')
    for candidate in LEAF_CANDIDATES.get(leaf, (leaf,)):
        name = f'{prefix}.{candidate}' if prefix else candidate
        if name in param_names:
            return name
    return None


def convert_state_dict(state_dict, net, skip_prefixes=(), optional_prefixes=()):
    """{torch name: ndarray} -> {MindSpore name: ndarray} for `net`; raises ConversionError on
    any missing, unexpected or mis-shaped key. Keys starting with one of `skip_prefixes` (e.g.
    'fc.' for a new classifier) are neither converted nor required; parameters of `net` under
    `optional_prefixes` are converted if present and not required."""
    params = {p.name: p for p in net.get_parameters() if not _starts(p.name, skip_prefixes)}
    converted, matched, unexpected, mismatched = {}, set(), [], []
    for key, value in state_dict.items():
        if key.rpartition('.')[2] in IGNORED_PTH_LEAVES or _starts(key, skip_prefixes):
            continue
        name = map_key(key, params)
        if name is None:
            unexpected.append(key)
            continue
        matched.add(name)
        if tuple(value.shape) != tuple(params[name].shape):
            mismatched.append(f'{key} {tuple(value.shape)} vs {name} {tuple(params[name].shape)}')
        else:
            converted[name] = value.astype(np.float32)
    missing = [name for name in params if name not in matched and not _starts(name, optional_prefixes)]
    if missing or unexpected or mismatched:
        raise ConversionError('the checkpoint does not match the network:\n'
                              + describe_mismatch(missing, unexpected, mismatched))
    return converted


# ----------------------------------------------------------------------------- another window size
def bicubic_resize_matrix(n_in, n_out, a=-0.75):
    """(n_out, n_in) matrix R such that R @ x resizes x along its first axis exactly as torch's
    F.interpolate(mode='bicubic', align_corners=False) does: source coordinate
    (i + 0.5) * n_in / n_out - 0.5, Keys' cubic with a = -0.75, taps clamped to the border."""
    src = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    base = np.floor(src)
    t = src - base

    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    weights = (far(t + 1), near(t), near(1 - t), far(2 - t))  # taps at base - 1 .. base + 2
    matrix = np.zeros((n_out, n_in))
    rows = np.arange(n_out)
    for offset, w in zip((-1, 0, 1, 2), weights):
        np.add.at(matrix, (rows, np.clip(base.astype(np.int64) + offset, 0, n_in - 1)), w)
    return matrix


def resize_bias_table(table, window_size):
    """A Swin relative-position bias table ((2w - 1)^2, heads) for another window size: each head's
    (2w - 1) x (2w - 1) grid resized bicubically to the new (2w' - 1) side, as official Swin's
    fine-tuning code does (computed in float64, returned as float32)."""
    table = np.asarray(table, np.float64)
    side, heads = int(round(np.sqrt(table.shape[0]))), table.shape[1]
    new_side = 2 * window_size - 1
    resize = bicubic_resize_matrix(side, new_side)
    grids = table.T.reshape(heads, side, side)
    resized = resize @ grids @ resize.T  # (heads, new_side, new_side)
    return resized.reshape(heads, -1).T.astype(np.float32)


def resize_bias_tables(params, net):
    """`params` with every relative-position bias table whose size differs from `net`'s resized to
    it (same number of heads, square odd-sided tables); anything else that differs is left for the
    strict check to report. Returns (params, number of tables resized)."""
    out, resized = dict(params), 0
    for p in net.get_parameters():
        if not p.name.endswith(BIAS_TABLE) or p.name not in params:
            continue
        value = params[p.name]
        value = value.asnumpy() if hasattr(value, 'asnumpy') else np.asarray(value)
        side = int(round(np.sqrt(value.shape[0]))) if value.ndim == 2 else 0
        if (value.shape != tuple(p.shape) and value.ndim == 2 and value.shape[1] == p.shape[1]
                and side * side == value.shape[0] and side % 2 == 1):
            new_side = int(round(np.sqrt(p.shape[0])))
            out[p.name] = resize_bias_table(value, (new_side + 1) // 2)
            resized += 1
    return out, resized


def ema_weights(params, path):
    """The EMA weights of a training checkpoint's {name: value}, under the network's names."""
    found = {k[len(EMA_PREFIX):]: v for k, v in params.items() if k.startswith(EMA_PREFIX)}
    if not found:
        raise CheckpointMismatchError(f'{path} has no EMA weights (it was not trained with ema: true, or it is '
                                      'a converted checkpoint); leave out --use_ema')
    return found


def load_weights(net, path, skip_prefixes=(), resize_windows=False, use_ema=False):
    """Strictly load a MindSpore .ckpt or an official .pth (converted in memory; needs torch) into
    `net`, with the model's own skipped and optional prefixes (see the module docstring). With
    `resize_windows`, Swin bias tables of another window size are resized to the model's (to start
    training or a backbone from weights of another resolution); without it they are a mismatch, as
    evaluation and export expect the weights of the model they build. With `use_ema`, the EMA
    weights of a training checkpoint (CheckpointMismatchError if it has none). Returns `net`."""
    skip = tuple(skip_prefixes) + tuple(getattr(net, 'checkpoint_skip_prefixes', ()))
    optional = tuple(getattr(net, 'optional_checkpoint_prefixes', ()))
    if use_ema and path.endswith(PTH_SUFFIXES):
        raise CheckpointMismatchError(f'{path}: --use_ema needs a .ckpt trained here with ema: true')
    params = load_pth(path) if path.endswith(PTH_SUFFIXES) else read_checkpoint(path)
    if use_ema:
        params = ema_weights(params, path)
    resized = 0
    if resize_windows:
        # the tables have the same names in torch and here, so a .pth is resized before conversion
        params, resized = resize_bias_tables(params, net)
    if path.endswith(PTH_SUFFIXES):
        params = convert_state_dict(params, net, skip, optional)
    if resized:
        print(f'resized {resized} relative-position bias tables of {path} to the window size of this model '
              '(bicubic)', flush=True)
    return load_checkpoint_strict(net, params, skip, optional)
