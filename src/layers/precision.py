"""The float32 islands of mixed precision inside the layers.

The official Swin-ACmix trains with apex O1, which runs matmuls and convolutions in float16 but keeps
softmax, LayerNorm and the loss in float32. `ms.amp.auto_mixed_precision(net, 'O2')` casts every Cell
to float16 except those on its black list (BatchNorm, LayerNorm), and the attention softmax is a
primitive inside the attention Cells, not a Cell of its own, so the attention layers lift their logits
to float32 themselves. The dtype tests below are resolved when the graph is compiled: a float32
network (amp O0) gets no extra node, and its graphs stay as they were.
"""
import mindspore as ms
from mindspore import nn

HALF_TYPES = (ms.float16, ms.bfloat16)
# the mixed_precision_type values Cell.to_float gives a Cell for each half type (the enum is not public)
_HALF_CELL_TYPES = tuple(nn.Cell().to_float(dtype).mixed_precision_type for dtype in HALF_TYPES)


def float32_if_half(x):
    """x in float32 if it is float16 or bfloat16 (mixed precision); otherwise x itself, no Cast."""
    if x.dtype in HALF_TYPES:
        return x.astype(ms.float32)
    return x


def cast_to(x, dtype):
    """x in `dtype`; x itself, no Cast, if it already has it."""
    if x.dtype == dtype:
        return x
    return x.astype(dtype)


def set_to_half(cell):
    """Whether auto_mixed_precision (or to_float) set `cell` to a half type. In a compiled graph such a
    Cell gets its inputs cast; called eagerly (PyNative), MindSpore casts the inputs of each op inside
    it instead, so a float32 input does not mean that its ops run in float32."""
    return cell.mixed_precision_type in _HALF_CELL_TYPES
