"""The convolution path of ACmix, shared by the ResNet and the Swin layer, in portable ops.

From the q/k/v projections (3 * heads maps of head_dim channels), the official code computes
f = fc(qkv), a 1x1 map from the 3 * heads head maps to k*k maps for every head-dim index d, then
dep_conv(f), a k x k convolution with head_dim groups initialised as shift kernels: group d reads the
f channels d * k*k + j and writes the output channels d * (C / head_dim) + m, with zero padding.

The grouped convolution is not depthwise (9 inputs and C / head_dim outputs per group), and the
MindSpore Conv2D pages say that Ascend runs grouped convolutions only when in_channels ==
out_channels == groups; here it is one batched matmul per group (the k*k taps' products at every
pixel) and a sum of the k*k products shifted by slicing their zero-padded map, which every device
runs, forward and backward.
"""
import numpy as np
from mindspore import nn, ops

from .padding import zero_pad_2d


def shift_kernels(out_channels, kernel_size):
    """Grouped-conv weights that make input channel i of each group a pure shift to (i // k, i % k).

    Returns a float32 array of shape (out_channels, k*k, k, k).
    """
    k2 = kernel_size * kernel_size
    kernel = np.zeros((k2, kernel_size, kernel_size), np.float32)
    for i in range(k2):
        kernel[i, i // kernel_size, i % kernel_size] = 1.0
    return np.tile(kernel[None], (out_channels, 1, 1, 1))


class ConvolutionPath(nn.Cell):
    """fc over the q/k/v heads, then the grouped k x k convolution; portable formulation (ops the
    MindSpore API pages list for Ascend, GPU and CPU, no grouped Conv2D, gradients by autodiff).
    Holds no parameters: the layer passes its own (official names), so every formulation loads the
    same checkpoints.

    construct(qkv, fc_weight, fc_bias, dep_weight):
        qkv: (B, 3C, H, W), or (B, H, W, 3C) with channels_last; channel s * C + n * hd + d for
            s in (q, k, v), head n, head-dim index d.
        fc_weight (k*k, 3 * heads), fc_bias (k*k,) or None, dep_weight (C, k*k, k, k).
    Returns (B, C, H', W'), or (B, H', W', C) with channels_last; H' = ceil(H / stride).
    """

    def __init__(self, num_heads, head_dim, out_channels, kernel_size, stride=1, dilation=1, channels_last=False):
        super().__init__()
        if out_channels % head_dim:
            raise ValueError(f'out_channels ({out_channels}) must be divisible by head_dim ({head_dim})')
        self.num_heads, self.head_dim, self.out_channels = num_heads, head_dim, out_channels
        self.kernel_size, self.stride, self.dilation = kernel_size, stride, dilation
        self.channels_last = channels_last
        self.padding = dilation * (kernel_size // 2)

    def _fc(self, qkv, fc_weight, fc_bias):
        """qkv -> f (B, hd, k*k, H*W): f[b, d, j, p] = sum_i fc[j, i] qkv[b, i * hd + d, p] + fc_bias[j]."""
        c3, hd = 3 * self.num_heads, self.head_dim
        if self.channels_last:
            h, w = qkv.shape[1], qkv.shape[2]
            # (B, HW, 3nh, hd) -> (B, HW, k2, hd), the fc applied to every token
            f = ops.matmul(fc_weight, qkv.reshape(-1, h * w, c3, hd))
            if fc_bias is not None:
                f = f + fc_bias.reshape(-1, 1)
            return ops.transpose(f, (0, 3, 2, 1))  # (B, hd, k2, HW)
        h, w = qkv.shape[2], qkv.shape[3]
        f = ops.matmul(fc_weight, qkv.reshape(-1, c3, hd * h * w))  # (B, k2, hd * HW)
        if fc_bias is not None:
            f = f + fc_bias.reshape(-1, 1)
        return ops.transpose(f.reshape(-1, fc_weight.shape[0], hd, h * w), (0, 2, 1, 3))  # (B, hd, k2, HW)

    def construct(self, qkv, fc_weight, fc_bias, dep_weight):
        dtype = qkv.dtype  # under mixed precision the parameters stay float32
        fc_weight, dep_weight = fc_weight.astype(dtype), dep_weight.astype(dtype)
        if fc_bias is not None:
            fc_bias = fc_bias.astype(dtype)
        h, w = (qkv.shape[1], qkv.shape[2]) if self.channels_last else (qkv.shape[2], qkv.shape[3])
        k, s, d, hd = self.kernel_size, self.stride, self.dilation, self.head_dim
        k2, opg = k * k, self.out_channels // hd
        h_out, w_out = (h - 1) // s + 1, (w - 1) // s + 1
        c, p = self.out_channels, self.padding
        f = self._fc(qkv, fc_weight, fc_bias)  # (B, hd, k2, HW)
        # The grouped convolution as a sum of shifted products: per group d and tap t = a * k + e,
        # y_t = dep_weight[d * opg + m, :, t] . f[d] at every pixel, then out = sum_t y_t shifted by
        # t. Shifting the products instead of the inputs moves opg instead of k2 channels per tap.
        weight = ops.transpose(dep_weight.reshape(hd, opg, k2, k2), (0, 3, 1, 2)).reshape(hd, k2 * opg, k2)
        y = ops.matmul(weight, f)  # (B, d, (t, m), HW)
        # zero padding of y is that of f: the products of a zero pixel are zero
        y = zero_pad_2d(y.reshape(-1, hd, k2 * opg, h, w), p, p, p, p)  # (B, d, (t, m), H + 2p, W + 2p)
        size = (y.shape[0], hd, opg, s * (h_out - 1) + 1, s * (w_out - 1) + 1)
        out = None
        for a in range(k):
            for e in range(k):
                # Slice, not StridedSlice (tensor[...]): on CPU the latter is 10-20x slower
                tap = ops.slice(y, (0, 0, (a * k + e) * opg, a * d, e * d), size)
                if s > 1:
                    tap = tap[..., ::s, ::s]
                out = tap if out is None else out + tap  # (B, d, m, h_out, w_out)
        out = out.reshape(-1, c, h_out, w_out)  # channel d * opg + m, as dep_conv's groups
        if self.channels_last:
            return ops.transpose(out.reshape(-1, c, h_out * w_out), (0, 2, 1)).reshape(-1, h_out, w_out, c)
        return out
