"""The exact (erf) GELU, without the Div of ops.gelu."""
import mindspore as ms
import numpy as np
from mindspore import Tensor, nn, ops


class GELU(nn.Cell):
    """x * (erf(x / sqrt(2)) + 1) * 0.5: torch's default (exact) GELU, computed in the order of
    ops.gelu(approximate='none'), which nn.GELU(approximate=False) calls, but dividing with RealDiv.
    ops.gelu divides with Div, and on CPU a Div keeps a table of 16 bytes per element for the life
    of the graph even when the divisor is a scalar (RealDiv keeps none); for Swin-T that is about
    1.4 GB of a training step. The result is bit-identical: both are the IEEE division, on every
    device, so both formulations use it."""

    def __init__(self):
        super().__init__()
        self.real_div = ops.RealDiv()
        self.erf = ops.Erf()
        self.sqrt2 = Tensor(np.sqrt(np.float32(2.0)), ms.float32)  # correctly rounded, as ops.sqrt(2.0)

    def construct(self, x):
        return x * (self.erf(self.real_div(x, self.sqrt2.astype(x.dtype))) + 1.0) * 0.5
