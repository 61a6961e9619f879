"""The ACmix convolution path tuned for MindSpore's CPU backend; the same interface and result as
the portable `..conv_path.ConvolutionPath`: construct(qkv, fc_weight, fc_bias, dep_weight).

* ResNet layout (qkv NCHW, fc without bias): FoldConvolutionPath, fc and the grouped convolution
  (both linear) as one batched matmul and a fold (Col2Im); as a grouped Conv2D, dep_conv's weight
  gradient alone costs more on CPU than all the rest of the layer.
* Swin layout (qkv token-major NHWC): KernelConvolutionPath, one hand-written C++ kernel pair
  (`kernels.py`, `csrc/conv_path.cc`), float32; other dtypes run the portable path. It also takes the
  qkv window-partitioned (`accepts_windows`), so the Swin layer partitions its C-wide input once for
  both paths instead of partitioning the 3C-wide qkv.
"""
import mindspore as ms
import numpy as np
from mindspore import Tensor, nn, ops

from ..precision import set_to_half
from ..window_ops import window_reverse
from .kernels import map_size
from .swap import SwapLastAxes, identity_stack


def mirrored_taps(kernel_size):
    """int32 index k*k - 1 - t for tap t = a*k + e: gathering a flattened k x k kernel with it
    rotates the kernel by 180 degrees (a convolution's adjoint uses the mirrored taps)."""
    return Tensor(np.arange(kernel_size * kernel_size)[::-1].copy(), ms.int32)


class FoldConvolutionPath(nn.Cell):
    """The convolution path of the ResNet layer: qkv (B, 3C, H, W), fc_weight (k2, 3 * heads),
    fc_bias None (the official ResNet fc has none), dep_weight (C, k2, k, k) -> (B, C, H', W')."""

    def __init__(self, num_heads, head_dim, out_channels, kernel_size, stride=1, dilation=1):
        super().__init__()
        self.num_heads, self.head_dim, self.out_channels = num_heads, head_dim, out_channels
        self.kernel_size, self.stride, self.dilation = kernel_size, stride, dilation
        self.mirrored_taps = mirrored_taps(kernel_size)
        self.bmm = ops.BatchMatMul()
        self.swap = SwapLastAxes()  # no parameters

    def construct(self, qkv, fc_weight, fc_bias, dep_weight):
        b, _, h, w = qkv.shape
        hd, kc, c3 = self.head_dim, self.kernel_size, 3 * self.num_heads
        k2 = kc * kc
        opg = self.out_channels // hd  # dep_conv output channels per group
        # (b, 3*head, head_dim*h*w): channels [q heads, k heads, v heads], as the official fc sees
        # them (it treats (head_dim, h*w) as its spatial plane).
        qkv = qkv.view(b, c3, hd * h * w)
        # -> (b * hd, 3*head, h*w) by two identity-matmul swaps (exact on CPU, and no Transpose
        # index tables), so that head_dim, dep_conv's group, becomes a batch axis.
        qkv = self.swap(qkv, identity_stack(b, c3, qkv.dtype))  # (b, hd*h*w, 3*head)
        qkv = self.swap(qkv.view(b * hd, h * w, c3), identity_stack(b * hd, c3, qkv.dtype))
        # fc (1x1, 3*head -> k2) and dep_conv (grouped k x k; group d: input channels d*k2 + j,
        # output channels d*opg + o) are both linear, so they are applied as one batched matmul
        # followed by a fold. Per group d and pixel p, for output channel o and mirrored tap t':
        # taps[(o, t'), p] = sum_c (sum_j W[d*opg + o, j, t] fc[j, c]) qkv[c, p]. Folding (Col2Im,
        # the adjoint of unfold) then adds taps[(o, t'), p] into output pixel p + offset(t') =
        # p - offset(t), which is the convolution's gather. Summing over j before p differs from
        # the official order by fp32 rounding only.
        weight = dep_weight.view(hd, opg, k2, kc * kc)
        weight = ops.gather(weight, self.mirrored_taps, 3)  # taps mirrored
        weight = ops.transpose(weight, (0, 1, 3, 2)).reshape(hd * opg * kc * kc, k2)
        weight = ops.matmul(weight, fc_weight).view(1, hd, opg * kc * kc, c3)
        weight = ops.tile(weight, (b, 1, 1, 1)).view(b * hd, opg * kc * kc, c3)
        taps = self.bmm(weight, qkv).view(b, self.out_channels * kc * kc, h * w)  # rows [d][o][t']
        pad = self.dilation * (kc // 2)
        out = ops.fold(taps, Tensor([h, w], ms.int32), kernel_size=kc, dilation=self.dilation,
                       padding=pad, stride=1)  # (b, out_channels, h, w)
        if self.stride > 1:
            out = out[:, :, ::self.stride, ::self.stride]
        return out


class KernelConvolutionPath(nn.Cell):
    """The convolution path of the Swin layer as the fused CPU kernel op: qkv (B, H, W, 3C) token-major,
    fc_weight (k2, 3nh), fc_bias (k2,), dep_weight (C, k2, k, k) -> (B, H, W, C). qkv may also be
    window-partitioned, (B, H / ws, W / ws, ws * ws, 3C) (window_partition's order): the output is the
    same convolution of the whole map. The kernel is float32; under mixed precision (a half input, or
    a Cell set to a half type: precision.set_to_half) the path runs `fallback` (the portable path) on
    the whole qkv map."""

    accepts_windows = True

    def __init__(self, kernel_op, fallback):
        super().__init__()
        self.kernel = kernel_op  # kernels.conv_path_op(kernel_size, head_dim)
        self.fallback = fallback

    def construct(self, qkv, fc_weight, fc_bias, dep_weight):
        if qkv.dtype == ms.float32 and not set_to_half(self):
            return self.kernel(qkv, fc_weight, fc_bias, dep_weight)
        if qkv.ndim == 5:
            _, h, w = map_size(qkv.shape)
            n, c3 = qkv.shape[3], qkv.shape[4]
            qkv = window_reverse(qkv.view(-1, n, c3), h // qkv.shape[1], h, w)  # (B, H, W, 3C)
        return self.fallback(qkv, fc_weight, fc_bias, dep_weight)
