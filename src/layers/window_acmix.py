"""Window attention for Swin Transformers, plain and ACmix.

Both Cells take the whole (cyclically shifted) map (B, H, W, C) and return a map of the same
shape, so a block treats them alike. For the plain attention this is the usual Swin computation
(the per-token qkv and proj commute with window partitioning). The ACmix one follows the official
`WindowAttention_acmix` (LeapLabTHU/ACmix): qkv runs on the whole shifted map, the convolution
path (fc over the 3*heads q/k/v channels, then a shift-initialised grouped convolution) runs on the
shifted map across window borders and the roll seam, unmasked, with zero padding; the output is
`rate1 * proj(window_attention) + rate2 * conv`, then proj_drop.
"""
import numpy as np
import mindspore as ms
from mindspore import nn, ops, Parameter, Tensor
from mindspore.common.initializer import TruncatedNormal, initializer

from .acmix import ACMIX_PATHS, shift_kernels, _check_odd
from .window_ops import relative_position_index, window_partition, window_reverse


def dense(in_features, out_features, has_bias=True):
    """nn.Dense with Swin's init: trunc_normal(std=.02) weights, zero bias."""
    return nn.Dense(in_features, out_features, weight_init=TruncatedNormal(0.02),
                    bias_init='zeros', has_bias=has_bias)


def tap_validity(h, w, k, dtype=ms.float32):
    """(k*k, h*w) tensor: 1 where tap t = a*k + e of a k x k kernel centred on pixel p (zero
    padding k // 2) falls inside the h x w map, else 0. Built from constants in the graph."""
    p = k // 2
    ones = ops.pad(ops.ones((h, w), dtype), (p, p, p, p))  # (h + 2p, w + 2p)
    taps = ()
    for t in range(k * k):
        a, e = t // k, t % k
        taps = taps + (ones[a:a + h, e:e + w].reshape(1, h * w),)
    return ops.cat(taps, 0)


def shift_taps(kernel_size):
    """(k*k, 1, k, k) one-hot kernels: convolving a map with kernel t (zero padding k // 2) gives
    the map shifted by tap t = a*k + e, out[y, x] = map[y + p - a, x + p - e], p = k // 2."""
    k, p = kernel_size, kernel_size // 2
    taps = np.zeros((k * k, 1, k, k), np.float32)
    for t in range(k * k):
        a, e = divmod(t, k)
        taps[t, 0, 2 * p - a, 2 * p - e] = 1.0
    return taps


class GroupedConv2d(nn.Cell):
    """Grouped k x k convolution, stride 1, zero padding k // 2, whose backward pass is two
    batched matmuls instead of oneDNN's convolution backward kernels.

    construct(x, weight): x (B, groups * ipg, H, W), weight (C, ipg, k, k) -> (B, C, H, W). The
    weight is an input, not a Parameter, so a caller can build it from other parameters; gradients
    flow back through it.

    Why: inside a Swin-T training step oneDNN runs the grouped convolution's backward passes with
    x64:gemm:jit far below its forward speed (stage 1, batch 8: backward-data 50 ms and
    backward-weights 100-120 ms against a 25 ms forward; backward-weights collapses further when
    another process holds a core). Both gradients contract one tensor with the shifted output
    gradient D[b, g, (m, t), y, x] = dout[b, g*opg + m, y - a + p, x - e + p] (zero outside the
    map): dW with the input, dx with the weight. D is built by one convolution with the k*k one-hot
    kernels of `shift_taps` (a single-channel convolution oneDNN runs fast), which also handles
    the borders; slicing the spatial axes instead is several times slower on CPU.
    """

    def __init__(self, out_channels, kernel_size, groups):
        super().__init__()
        if out_channels % groups:
            raise ValueError(f'out_channels ({out_channels}) must be divisible by groups ({groups})')
        self.groups = groups
        self.kernel_size = kernel_size
        pad = kernel_size // 2
        self.conv = ops.Conv2D(out_channels, kernel_size, pad_mode='pad', pad=pad, group=groups)
        self.shift = ops.Conv2D(kernel_size * kernel_size, kernel_size, pad_mode='pad', pad=pad)
        self.taps = Tensor(shift_taps(kernel_size))
        self._matmul_nt = ops.BatchMatMul(transpose_b=True)

    def construct(self, x, weight):
        return self.conv(x, weight)

    def bprop(self, x, weight, out, dout):
        # (computed even when the weight is frozen, learnable_shift=False; the optimizer skips it)
        b, cin, h, w = x.shape
        c, k2, g = dout.shape[1], self.kernel_size * self.kernel_size, self.groups
        ipg, opg = cin // g, c // g
        # (B*C, 1, H, W) -> (B*C, k2, H, W) = (B, g, opg*k2, H*W): rows (m, t)
        d = self.shift(dout.reshape(b * c, 1, h, w), self.taps.astype(dout.dtype)).reshape(b, g, opg * k2, h * w)
        # dW[g, (m, t), i] = sum_{b, y, x} D[b, g, (m, t), y, x] * x[b, g*ipg + i, y, x]
        dweight = self._matmul_nt(d, x.reshape(b, g, ipg, h * w)).sum(0)
        dweight = ops.transpose(dweight.reshape(g, opg, k2, ipg), (0, 1, 3, 2)).reshape(weight.shape)
        # dx[b, g*ipg + i] = sum_{(m, t)} weight[g*opg + m, i, t] * D[b, g, (m, t)]
        wt = ops.transpose(weight.reshape(g, opg, ipg, k2), (0, 2, 1, 3)).reshape(1, g, ipg, opg * k2)
        dx = ops.matmul(ops.tile(wt, (b, 1, 1, 1)), d).reshape(x.shape)
        return dx, dweight


class WindowAttention(nn.Cell):
    """Multi-head self-attention inside non-overlapping windows, with relative position bias.

    Args:
        dim: channels; num_heads must divide it.
        window_size: side of the square window.
        num_heads: attention heads.
        qkv_bias: bias on the qkv projection.
        qk_scale: overrides head_dim ** -0.5.
        attn_drop, proj_drop: dropout rates.

    construct(x, mask=None): x (B, H, W, C) with H, W multiples of window_size; mask None or a
    (nW, N, N) additive mask (N = window_size^2). Returns (B, H, W, C).
    """

    def __init__(self, dim, window_size, num_heads, qkv_bias=True, qk_scale=None,
                 attn_drop=0.0, proj_drop=0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f'dim ({dim}) must be divisible by num_heads ({num_heads})')
        self.dim = dim
        self.window_size = window_size
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = qk_scale or self.head_dim ** -0.5
        self.qkv = dense(dim, 3 * dim, has_bias=qkv_bias)
        self._init_attention(attn_drop)
        self.proj_drop = nn.Dropout(p=proj_drop)

    def _init_attention(self, attn_drop):
        ws = self.window_size
        self.relative_position_bias_table = Parameter(
            initializer(TruncatedNormal(0.02), ((2 * ws - 1) ** 2, self.num_heads), ms.float32),
            name='relative_position_bias_table')
        # A constant Tensor, not a Parameter: it stays out of checkpoints and optimizers.
        self.relative_position_index = Tensor(relative_position_index(ws).reshape(-1), ms.int32)
        self.attn_drop = nn.Dropout(p=attn_drop)
        self.proj = dense(self.dim, self.dim)
        self._matmul_t = ops.MatMul(transpose_b=True)  # x @ W.T, as nn.Dense computes it

    def _window_attention(self, qkv, mask, out_scale=None):
        """qkv (B, H, W, 3C) -> attention output after proj, (B, H, W, C); multiplied by
        out_scale (a (1,) tensor) when given, folded into the proj weights."""
        _, h, w, _ = qkv.shape
        ws, nh, hd = self.window_size, self.num_heads, self.head_dim
        n = ws * ws
        win = window_partition(qkv, ws)  # (B*nW, N, 3C)
        bw = win.shape[0]
        win = ops.transpose(win.reshape(bw, n, 3, nh, hd), (2, 0, 3, 1, 4))  # (3, B*nW, nh, N, hd)
        q, k, v = ops.unbind(win, 0)
        attn = ops.matmul(q * self.scale, k.swapaxes(-2, -1))  # (B*nW, nh, N, N)
        # The relative bias (and the shift mask) are added with BiasAdd over a flattened attn,
        # not with a broadcasting Add: on CPU a broadcasting Add/Mul builds two output-sized
        # index tables (16 B per element, kept for the graph's life) and is several times
        # slower than BiasAdd, which repeats its (C,) operand along the leading axis.
        bias = self.relative_position_bias_table[self.relative_position_index].view(n, n, nh)
        bias = ops.transpose(bias, (2, 0, 1))  # (nh, N, N)
        if mask is None:
            attn = ops.bias_add(attn.reshape(bw, nh * n * n), bias.reshape(-1))
        else:
            nw = mask.shape[0]
            # (nW, nh, N, N): small, built once per call; the big add then repeats it per image.
            bias = bias.expand_dims(0) + mask.view(nw, 1, n, n).astype(attn.dtype)
            attn = ops.bias_add(attn.reshape(bw // nw, nw * nh * n * n), bias.reshape(-1))
        attn = self.attn_drop(ops.softmax(attn.reshape(bw, nh, n, n), axis=-1))
        out = ops.matmul(attn, v).swapaxes(1, 2).reshape(bw * n, self.dim)  # (B*nW*N, C)
        if out_scale is None:
            out = self.proj(out)
        else:  # out_scale * proj(out), with the scale on the (C, C) weights, not on the activations
            out = ops.bias_add(self._matmul_t(out, self.proj.weight * out_scale), self.proj.bias * out_scale)
        return window_reverse(out.reshape(bw, n, self.dim), ws, h, w)

    def construct(self, x, mask=None):
        return self.proj_drop(self._window_attention(self.qkv(x), mask))


class WindowAttentionACmix(WindowAttention):
    """Swin ACmix: window attention and a grouped-convolution path sharing one qkv projection.

    Extra args:
        kernel_conv: kernel of the convolution path (odd; the official code hard-codes 3).
        paths: 'both' (default, summed with learnable rates), 'attention' or 'conv'.
        learnable_shift: if False the grouped convolution keeps its shift kernels fixed.
    """

    def __init__(self, dim, window_size, num_heads, qkv_bias=True, qk_scale=None, attn_drop=0.0,
                 proj_drop=0.0, kernel_conv=3, paths='both', learnable_shift=True):
        _check_odd('kernel_conv', kernel_conv)
        if paths not in ACMIX_PATHS:
            raise ValueError(f'paths must be one of {ACMIX_PATHS}, got {paths!r}')
        self.use_att = paths in ('both', 'attention')
        self.use_conv = paths in ('both', 'conv')
        super().__init__(dim, window_size, num_heads, qkv_bias, qk_scale, attn_drop, proj_drop)
        self.kernel_conv = kernel_conv
        if self.use_conv:
            k2 = kernel_conv * kernel_conv
            # Unlike the ResNet layer, the Swin fc has a bias; dep_conv has none (see acmix.py).
            # Both Cells only hold the parameters (official names and shapes); _convolution
            # computes with their weights directly.
            self.fc = nn.Conv2d(3 * num_heads, k2, 1, pad_mode='valid', has_bias=True)
            self.dep_conv = nn.Conv2d(k2 * self.head_dim, dim, kernel_conv, pad_mode='pad',
                                      padding=kernel_conv // 2, group=self.head_dim, has_bias=False,
                                      weight_init=Tensor(shift_kernels(dim, kernel_conv)))
            self.dep_conv.weight.requires_grad = learnable_shift
            # fc is linear, so it folds into the grouped convolution: 'fused' runs one conv with
            # 3*heads input channels per group, 'separate' the fc as a matmul, then the conv with
            # k2 per group. Fused saves the fc and a transpose but its conv costs 3*heads/k2 times
            # as much; it wins when 3*heads <= k2 (Swin-T stage 1). Both give the same numbers.
            self.conv_form = 'fused' if 3 * num_heads <= k2 else 'separate'
            self.grouped_conv = GroupedConv2d(dim, kernel_conv, self.head_dim)
            self._matmul_t = ops.MatMul(transpose_b=True)
        if self.use_att and self.use_conv:
            self.rate1 = Parameter(Tensor([0.5], ms.float32), name='rate1')
            self.rate2 = Parameter(Tensor([0.5], ms.float32), name='rate2')

    def _init_attention(self, attn_drop):
        if self.use_att:
            super()._init_attention(attn_drop)

    def _convolution(self, qkv, out_scale=None):
        """qkv (B, H, W, 3C) -> convolution path (B, H, W, C), on the whole map, multiplied by
        out_scale (a (1,) tensor) when given, folded into the fc weights."""
        b, h, w, c3 = qkv.shape
        nh, hd, k = self.num_heads, self.head_dim, self.kernel_conv
        k2, c = k * k, c3 // 3
        fc_w = self.fc.weight.reshape(k2, 3 * nh)  # (k2, 3nh): input i = s*nh + head, s in (q, k, v)
        fc_b = self.fc.bias
        if out_scale is not None:  # conv(scale * f) = scale * conv(f): scale the small fc instead
            fc_w, fc_b = fc_w * out_scale, fc_b * out_scale
        dep_w = self.dep_conv.weight  # (C, k2, k, k); output o = d * nh + m is in group d
        if self.conv_form == 'fused':
            # weight[o, i, :, :] = sum_j dep_w[o, j, :, :] * fc_w[j, i]  -> (C, 3nh, k, k)
            wt = ops.transpose(dep_w, (0, 2, 3, 1)).reshape(c * k2, k2)  # (C*k*k, k2)
            weight = ops.transpose(ops.matmul(wt, fc_w).reshape(c, k, k, 3 * nh), (0, 3, 1, 2))
            # (B, H, W, 3nh, hd) -> (B, hd, 3nh, H, W): group d holds the 3nh channels of dim d
            x = ops.transpose(qkv.reshape(b, h, w, 3 * nh, hd), (0, 4, 3, 1, 2)).reshape(b, hd * 3 * nh, h, w)
            fc_b_taps = ops.matmul(wt, fc_b.reshape(k2, 1)).reshape(c, k2)  # (C, k2), tap t = a*k + e
        else:
            # fc as a matmul over the 3nh channels of each (token, dim d):
            # (B*H*W, 3nh, hd) -> (B*H*W, hd, 3nh) @ fc_w.T -> (B*H*W*hd, k2)
            f = qkv.reshape(b * h * w, 3 * nh, hd).swapaxes(1, 2).reshape(-1, 3 * nh)
            f = ops.bias_add(self._matmul_t(f, fc_w), fc_b)
            # (B, H, W, hd*k2) -> (B, hd*k2, H, W): channel d*k2 + j, the dep_conv input order
            x = ops.transpose(f.reshape(b, h, w, hd * k2), (0, 3, 1, 2))
            weight, fc_b_taps = dep_w, None
        out = self.grouped_conv(x, weight)  # (B, C, H, W)
        out = ops.transpose(out, (0, 2, 3, 1))  # (B, H, W, C)
        if fc_b_taps is not None:
            # The fc output is zero-padded, so its bias reaches pixel p only through the taps that
            # stay inside the map: bias_map[p, o] = sum_t valid[t, p] * fc_b_taps[o, t].
            valid = tap_validity(h, w, k, out.dtype)  # (k2, H*W)
            bias_map = ops.matmul(valid.swapaxes(0, 1), fc_b_taps.swapaxes(0, 1))  # (H*W, C)
            out = ops.bias_add(out.reshape(b, h * w * c), bias_map.reshape(-1)).reshape(b, h, w, c)
        return out

    def construct(self, x, mask=None):
        qkv = self.qkv(x)
        if self.use_att and self.use_conv:
            # rate1 * att + rate2 * conv, with each rate folded into that path's weights: a (1,)
            # rate times a (B, H, W, C) map would be a slow broadcasting Mul on CPU
            out = self._window_attention(qkv, mask, self.rate1) + self._convolution(qkv, self.rate2)
        elif self.use_att:
            out = self._window_attention(qkv, mask)
        else:
            out = self._convolution(qkv)
        return self.proj_drop(out)
