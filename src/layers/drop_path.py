"""Stochastic depth per sample (drop the residual branch of whole samples)."""
import mindspore as ms
from mindspore import Tensor, nn, ops


class DropPath(nn.Cell):
    """Zero a residual branch for a random subset of samples in training, scaling the kept ones
    by 1 / (1 - drop_prob) (timm's `x.div(keep_prob) * mask`); identity in eval mode.

    The division is a RealDiv (a Div keeps a per-element table on CPU, see activation.py). The
    (B, 1, ..., 1) mask is applied by a broadcasting Mul in the portable formulation and, in the
    'cpu' one, as a batched matmul with an inner dimension of 1, (B, M, 1) x (B, 1, 1), which
    multiplies each element by its sample's mask value just the same: on CPU a broadcasting Mul
    keeps index tables of 16 bytes per element for the graph's life (see docs/benchmark.md), the
    matmul none. The formulation (formulation.py) sets mask_by_matmul.
    """

    def __init__(self, drop_prob=0.0, mask_by_matmul=False):
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f'drop_prob must be in [0, 1), got {drop_prob}')
        self.keep_prob = 1.0 - drop_prob
        self.keep = Tensor(self.keep_prob, ms.float32)
        self.real_div = ops.RealDiv()
        self.mask_by_matmul = mask_by_matmul
        self.bmm = ops.BatchMatMul()

    def construct(self, x):
        if not self.training or self.keep_prob == 1.0:
            return x
        b = x.shape[0]
        shape = (b,) + (1,) * (x.ndim - 1)
        mask = ops.stop_gradient(ops.floor(self.keep_prob + ops.rand(shape, dtype=x.dtype)))
        x = self.real_div(x, self.keep.astype(x.dtype))
        if self.mask_by_matmul:
            return self.bmm(x.reshape(b, -1, 1), mask.reshape(b, 1, 1)).reshape(x.shape)  # (B, M, 1) -> x's shape
        return x * mask
