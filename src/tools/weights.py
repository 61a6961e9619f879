"""Load weights into a network from a MindSpore .ckpt or an official PyTorch .pth."""
import mindspore as ms

from ..engine.checkpoint import load_checkpoint_strict
from . import pth2ckpt

PTH_SUFFIXES = ('.pth', '.pt', '.pth.tar')


def load_weights(net, path, skip_prefixes=()):
    """Strictly load `path` into `net` (a .pth is converted in memory; needs torch)."""
    if path.endswith(PTH_SUFFIXES):
        converted = pth2ckpt.convert_state_dict(pth2ckpt.load_pth(path), net, skip_prefixes)
        path = {k: ms.Parameter(ms.Tensor(v), name=k) for k, v in converted.items()}
    return load_checkpoint_strict(net, path, skip_prefixes)
