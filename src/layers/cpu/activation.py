"""The exact GELU as the CPU kernel pair of `kernels.gelu_ops` (`csrc/gelu.cc`): one pass over the data
each way, where MindSpore's CPU ops for it and its gradient are a chain of element-wise kernels."""
import mindspore as ms
from mindspore import nn

from ..activation import GELU


class _GeluKernel(nn.Cell):
    def __init__(self, kernel_forward, kernel_backward):
        super().__init__()
        self.kernel_forward = kernel_forward
        self.kernel_backward = kernel_backward

    def construct(self, x):
        return self.kernel_forward(x)

    def bprop(self, x, out, dout):
        return (self.kernel_backward(x, dout),)


class KernelGELU(GELU):
    """GELU (exact, x * Phi(x)) by the kernel pair for float32 inputs; other dtypes run GELU's ops. Within
    fp32 rounding of GELU (the kernel's Phi of a negative x is the more precise one: see the source)."""

    def __init__(self, kernel_ops):
        super().__init__()
        self.kernel = _GeluKernel(*kernel_ops)

    def construct(self, x):
        if x.dtype == ms.float32:
            return self.kernel(x)
        return super().construct(x)
