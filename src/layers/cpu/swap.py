"""Axis swaps as matmuls with identity matrices, the CPU formulation's replacement of Transpose on
large tensors: on CPU a Transpose kernel keeps an index table of 8 bytes per element for the graph's
life, and a matmul with an identity is exact there (not on devices whose fp32 matmuls may run in
reduced precision: CPU formulation only). Used by the blocked local attention and the ResNet
convolution path."""
import numpy as np
from mindspore import Tensor, nn, ops
from mindspore.ops import constexpr


@constexpr
def identity_stack(n, m, dtype, scale=1.0):
    """n stacked m x m identity matrices, times scale."""
    return Tensor(np.broadcast_to(np.eye(m) * scale, (n, m, m)).copy(), dtype)


class SwapLastAxes(nn.Cell):
    """(N, a, m) -> (N, m, a) by a batched matmul with an identity matrix `eye` (N, e, e), e = a
    or m (the cost is e multiply-adds per element, so pass the smaller). Exact, and unlike the CPU
    Transpose kernel it keeps no per-element index table. The backward is the same swap back."""

    def __init__(self):
        super().__init__()
        self.bmm_nt = ops.BatchMatMul(transpose_b=True)
        self.bmm_tn = ops.BatchMatMul(transpose_a=True)
        self.zeros_like = ops.ZerosLike()

    def construct(self, x, eye):
        if eye.shape[2] == x.shape[2]:
            return self.bmm_nt(eye, x)  # I_m @ x^T
        return self.bmm_tn(x, eye)  # x^T @ I_a

    def bprop(self, x, eye, out, dout):
        if eye.shape[2] == x.shape[2]:
            return self.bmm_tn(dout, eye), self.zeros_like(eye)
        return self.bmm_nt(eye, dout), self.zeros_like(eye)
