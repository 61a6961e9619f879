"""LayerNorm over the last axis as the CPU kernel pair of `kernels.layer_norm_ops` (`csrc/layer_norm.cc`):
MindSpore's CPU LayerNormGrad takes many times the time of a pass over its data."""
import mindspore as ms
import numpy as np
from mindspore import Tensor, nn, ops


class _LayerNormKernel(nn.Cell):
    """construct(x, gamma, beta, eps (1,)) -> y; gradients of x, gamma and beta from the backward kernel."""

    def __init__(self, kernel_forward, kernel_backward):
        super().__init__()
        self.kernel_forward = kernel_forward
        self.kernel_backward = kernel_backward

    def construct(self, x, gamma, beta, eps):
        return self.kernel_forward(x, gamma, beta, eps)

    def bprop(self, x, gamma, beta, eps, out, dout):
        dx, dgamma, dbeta = self.kernel_backward(x, gamma, eps, dout)
        return dx, dgamma, dbeta, ops.zeros_like(eps)


class KernelLayerNorm(nn.LayerNorm):
    """nn.LayerNorm((C,), epsilon=epsilon) (same parameters, gamma and beta) computed by the kernel pair
    for float32 inputs; other dtypes run nn.LayerNorm's op. The result differs from ops.LayerNorm's by
    fp32 rounding (another summation order)."""

    def __init__(self, dim, epsilon, kernel_ops):
        super().__init__((dim,), epsilon=epsilon)
        self.kernel = _LayerNormKernel(*kernel_ops)
        self.eps = Tensor(np.array([epsilon], np.float32))

    def construct(self, x):
        if x.dtype == ms.float32:
            return self.kernel(x, self.gamma, self.beta, self.eps)
        return super().construct(x)
