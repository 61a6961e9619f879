"""LayerNorm over the last axis as the CPU kernel pair of `kernels.layer_norm_op` (`csrc/layer_norm.cc`):
MindSpore's CPU LayerNormGrad takes many times the time of a pass over its data."""
import mindspore as ms
import numpy as np
from mindspore import Tensor, nn

from ..precision import set_to_half


class KernelLayerNorm(nn.LayerNorm):
    """nn.LayerNorm((C,), epsilon=epsilon) (same parameters, gamma and beta) computed by the kernel op
    (`kernels.layer_norm_op()`) for float32 inputs; other dtypes, and a Cell mixed precision set to a
    half type (precision.set_to_half), run nn.LayerNorm's op. The result
    differs from ops.LayerNorm's by fp32 rounding (another summation order)."""

    def __init__(self, dim, epsilon, kernel_op):
        super().__init__((dim,), epsilon=epsilon)
        self.kernel = kernel_op
        self.eps = Tensor(np.array([epsilon], np.float32))

    def construct(self, x):
        if x.dtype == ms.float32 and not set_to_half(self):
            return self.kernel(x, self.gamma, self.beta, self.eps)
        return super().construct(x)
