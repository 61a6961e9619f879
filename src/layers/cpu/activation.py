"""The exact GELU as the CPU kernel pair of `kernels.gelu_op` (`csrc/gelu.cc`): one pass over the data
each way, where MindSpore's CPU ops for it and its gradient are a chain of element-wise kernels."""
import mindspore as ms

from ..activation import GELU
from ..precision import set_to_half


class KernelGELU(GELU):
    """GELU (exact, x * Phi(x)) by the kernel op (`kernels.gelu_op()`) for float32 inputs; other dtypes,
    and a Cell mixed precision set to a half type (precision.set_to_half), run GELU's ops. Within fp32
    rounding of GELU (the kernel's Phi of a negative x is the more precise one: see the source)."""

    def __init__(self, kernel_op):
        super().__init__()
        self.kernel = kernel_op

    def construct(self, x):
        if x.dtype == ms.float32 and not set_to_half(self):
            return self.kernel(x)
        return super().construct(x)
