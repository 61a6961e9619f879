"""Window attention for Swin Transformers, plain and ACmix.

Both Cells take the whole (cyclically shifted) map (B, H, W, C) and return a map of the same
shape, so a block treats them alike. For the plain attention this is the usual Swin computation
(the per-token qkv and proj commute with window partitioning). The ACmix one follows the official
`WindowAttention_acmix` (LeapLabTHU/ACmix): qkv runs on the whole shifted map, the convolution
path (fc over the 3*heads q/k/v channels, then a shift-initialised grouped convolution) runs on the
shifted map across window borders and the roll seam, unmasked, with zero padding; the output is
`rate1 * proj(window_attention) + rate2 * conv`, then proj_drop.
"""
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


class GroupedConv2d(nn.Cell):
    """conv2d(x, weight) with stride 1, zero padding k // 2 and `groups` groups, whose weight
    gradient is computed by a forward convolution instead of oneDNN's backward-weights kernel.

    Why: on the 2-core CPU oneDNN runs all three passes with x64:gemm:jit; its backward-weights
    pass synchronises its two threads many times and collapses when anything else holds a core.
    Swin-T stage 1 (batch 8, 288 -> 96 channels, 32 groups, 56x56): 59 ms alone, 795 ms next to
    one busy process (13x), while forward and backward-data slow down 1.2-1.5x and this forward
    formulation of the same numbers 1.9x (73 -> 140 ms). The weight is an input, not a
    Parameter, so a caller can build it from other parameters; gradients flow back through it.
    """

    def __init__(self, out_channels, kernel_size, groups):
        super().__init__()
        self.groups = groups
        self.pad = kernel_size // 2
        self.conv = ops.Conv2D(out_channels, kernel_size, pad_mode='pad', pad=self.pad, group=groups)
        self.grad_input = ops.Conv2DBackpropInput(out_channels, kernel_size, pad_mode='pad', pad=self.pad,
                                                  group=groups)

    def construct(self, x, weight):
        return self.conv(x, weight)

    def weight_grad(self, x, dout):
        """dW[o, i, a, e] = sum_{b, y, x} dout[b, o, y, x] * x_pad[b, g*cin + i, y + a, x + e], with
        o in group g = o // (C / groups): a forward conv whose images are the cin input channels of
        a group, whose channels are (group, batch) and whose kernel is dout, one group at a time."""
        b, c, h, w = dout.shape
        g = self.groups
        cin = x.shape[1] // g
        # x (B, g*cin, H, W) -> (cin, g*B, H, W): image i, channel (group, batch)
        xi = ops.transpose(x.reshape(b, g, cin, h, w), (2, 1, 0, 3, 4)).reshape(cin, g * b, h, w)
        # dout (B, C, H, W) -> kernel (C, B, H, W); output channel o belongs to group o // (C / g)
        kernel = ops.transpose(dout, (1, 0, 2, 3))
        dw = ops.conv2d(xi, kernel, pad_mode='pad', padding=self.pad, groups=g)  # (cin, C, k, k)
        return ops.transpose(dw, (1, 0, 2, 3))

    def bprop(self, x, weight, out, dout):
        # (computed even when the weight is frozen, learnable_shift=False; the optimizer skips it)
        dweight = self.weight_grad(x, dout)
        # the data gradient after the weight gradient: two oneDNN convolutions run side by side
        # compete for the same two threads (stage 1: 0.9 s together against 0.18 s in turn)
        dx = self.grad_input(ops.depend(dout, dweight), weight, x.shape)
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
