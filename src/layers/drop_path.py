"""Stochastic depth per sample (drop the residual branch of whole samples)."""
from mindspore import nn, ops


class DropPath(nn.Cell):
    """Zero a residual branch for a random subset of samples in training, scaling the kept ones
    by 1 / (1 - drop_prob); identity in eval mode."""

    def __init__(self, drop_prob=0.0):
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f'drop_prob must be in [0, 1), got {drop_prob}')
        self.keep_prob = 1.0 - drop_prob

    def construct(self, x):
        if not self.training or self.keep_prob == 1.0:
            return x
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        mask = ops.floor(self.keep_prob + ops.rand(shape, dtype=x.dtype))
        return x / self.keep_prob * mask
