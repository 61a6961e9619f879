"""x @ weight.T + bias as a Cell of its inputs, for a layer that computes with scaled weights of an
nn.Dense (the Swin ACmix proj with its mixing rate folded in)."""
from mindspore import nn, ops


class Linear(nn.Cell):
    """construct(x (M, C_in), weight (C_out, C_in), bias (C_out,)) -> x @ weight.T + bias, (M, C_out),
    the ops nn.Dense runs."""

    def __init__(self):
        super().__init__()
        self.matmul_t = ops.MatMul(transpose_b=True)
        self.bias_add = ops.BiasAdd()

    def construct(self, x, weight, bias):
        return self.bias_add(self.matmul_t(x, weight), bias)
