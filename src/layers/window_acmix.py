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

from .acmix import ACMIX_PATHS, mirrored_taps, shift_kernels, _check_odd
from .cpu_kernels import conv_path_ops
from .window_ops import relative_position_index, window_partition, window_reverse


def dense(in_features, out_features, has_bias=True):
    """nn.Dense with Swin's init: trunc_normal(std=.02) weights, zero bias."""
    return nn.Dense(in_features, out_features, weight_init=TruncatedNormal(0.02),
                    bias_init='zeros', has_bias=has_bias)


class GroupedConv2d(nn.Cell):
    """Grouped k x k convolution, stride 1, zero padding k // 2, with a forward pass that picks
    the cheaper of two oneDNN kernels for its shape and a backward pass built from forward
    convolutions and one batched matmul instead of oneDNN's slow grouped backward kernels.

    construct(x, weight): x (B, groups * ipg, H, W), weight (C, ipg, k, k) -> (B, C, H, W). The
    weight is an input, not a Parameter, so a caller can build it from other parameters; gradients
    flow back through it.

    Why: inside a Swin-T training step oneDNN runs the grouped convolution's backward passes with
    x64:gemm:jit far below its forward speed (stage 1, batch 8: backward-data 50 ms and
    backward-weights 100-120 ms against a 25 ms forward; backward-weights collapses further when
    another process holds a core). Here the data gradient is a forward convolution of dout with
    the transposed, flipped weight, and the weight gradient one batched matmul over (batch, group):
    dW[o, i, t] = sum_q dout[o, q] * x[i, q + s_t] contracts dout with the k*k shifted copies of x,
    or, equally, the shifted copies of dout with x; whichever of the two has fewer channels per
    group is shifted. The shifted copies come from one single-channel convolution with the k*k
    one-hot kernels of `shift_kernels` (fast in oneDNN, borders included; slicing the spatial axes
    instead is several times slower on CPU).

    The forward pass picks the cheaper of two equal computations. oneDNN's forward kernel copies
    k*k*ipg values per pixel and group (im2col) before its matmul; a transposed convolution of x
    with the transposed, flipped weight (oneDNN's backward-data kernel) writes k*k*opg values per
    pixel and group and then accumulates them (col2im), which costs more per value. Measured in
    the Swin-T inference profile at batch 8, stage 1 (opg 3, ipg 9) drops from 29-36 to 19-20 ms
    per block, while stage 2 (opg 6) and stage 3 (opg 12) are faster in the forward form; hence
    the transposed form when 2 * opg < ipg, decided once from the channel counts.
    """

    def __init__(self, in_channels, out_channels, kernel_size, groups):
        super().__init__()
        for name, channels in (('in_channels', in_channels), ('out_channels', out_channels)):
            if channels % groups:
                raise ValueError(f'{name} ({channels}) must be divisible by groups ({groups})')
        self.groups = groups
        self.kernel_size = kernel_size
        k2, pad = kernel_size * kernel_size, kernel_size // 2
        self.transposed_forward = 2 * out_channels < in_channels  # 2 * opg < ipg: see the class docstring
        if self.transposed_forward:
            self.conv_t = ops.Conv2DBackpropInput(in_channels, kernel_size, pad_mode='pad', pad=pad, group=groups)
        else:
            self.conv = ops.Conv2D(out_channels, kernel_size, pad_mode='pad', pad=pad, group=groups)
        self.shift = ops.Conv2D(k2, kernel_size, pad_mode='pad', pad=pad)
        # Tap t = a*k + e: kernel t shifts a map by s_t, out[y, x] = map[y + a - p, x + e - p];
        # the mirrored kernels shift by -s_t.
        taps = shift_kernels(1, kernel_size).reshape(k2, 1, kernel_size, kernel_size)
        self.taps_forward = Tensor(taps)
        self.taps_backward = Tensor(taps[::-1].copy())
        self.flip = mirrored_taps(kernel_size)
        self._matmul_nt = ops.BatchMatMul(transpose_b=True)

    def _transposed_weight(self, weight):
        """(C, ipg, k, k) -> w' (groups*ipg, opg, k, k), w'[g*ipg + i, m, t] = weight[g*opg + m, i, k2 - 1 - t]:
        conv(dout, w') is the data gradient of conv(x, weight), and the transposed convolution
        of x with w' equals conv(x, weight)."""
        g, k = self.groups, self.kernel_size
        opg, ipg = weight.shape[0] // g, weight.shape[1]
        wt = ops.transpose(weight.reshape(g, opg, ipg, k * k), (0, 2, 1, 3)).reshape(g * ipg * opg, k * k)
        return ops.gather(wt, self.flip, 1).reshape(g * ipg, opg, k, k)

    def construct(self, x, weight):
        if self.transposed_forward:
            b, _, h, w = x.shape
            return self.conv_t(x, self._transposed_weight(weight), (b, weight.shape[0], h, w))
        return self.conv(x, weight)

    def _shifted(self, x, taps):
        """(B, C, H, W) -> (B, C * k2, H * W): channel c * k2 + t holds x shifted by tap t."""
        b, c, h, w = x.shape
        return self.shift(x.reshape(b * c, 1, h, w), taps.astype(x.dtype)).reshape(b, c * taps.shape[0], h * w)

    def bprop(self, x, weight, out, dout):
        # (computed even when the weight is frozen, learnable_shift=False; the optimizer skips it)
        b, cin, h, w = x.shape
        c, k, g = dout.shape[1], self.kernel_size, self.groups
        k2, ipg, opg = k * k, cin // g, c // g
        dx = ops.conv2d(dout, self._transposed_weight(weight), pad_mode='pad', padding=k // 2, groups=g)
        if opg <= ipg:
            # D[b, g, (m, t), q] = dout[b, g*opg + m, q - s_t]; dW[g, (m, t), i] = sum_{b, q} D * x
            d = self._shifted(dout, self.taps_backward).reshape(b, g, opg * k2, h * w)
            dweight = self._matmul_nt(d, x.reshape(b, g, ipg, h * w)).sum(0)
            dweight = ops.transpose(dweight.reshape(g, opg, k2, ipg), (0, 1, 3, 2))
        else:
            # S[b, g, (i, t), q] = x[b, g*ipg + i, q + s_t]; dW[g, m, (i, t)] = sum_{b, q} dout * S
            s = self._shifted(x, self.taps_forward).reshape(b, g, ipg * k2, h * w)
            dweight = self._matmul_nt(dout.reshape(b, g, opg, h * w), s).sum(0)
        return dx, dweight.reshape(weight.shape)


class ConvPathKernel(nn.Cell):
    """The Swin ACmix convolution path, fc over the q/k/v heads then the grouped convolution, as one
    hand-written CPU kernel pair (`cpu_kernels`, `kernels/acmix_cpu.cc`).

    construct(qkv (B, H, W, 3C), fc_w (k2, 3nh), fc_b (k2,), dep_w (C, k2, k, k)) -> (B, H, W, C),
    float32; gradients for all four inputs.
    """

    def __init__(self, kernel_forward, kernel_backward):
        super().__init__()
        self.kernel_forward = kernel_forward
        self.kernel_backward = kernel_backward

    def construct(self, qkv, fc_w, fc_b, dep_w):
        return self.kernel_forward(qkv, fc_w, fc_b, dep_w)

    def bprop(self, qkv, fc_w, fc_b, dep_w, out, dout):
        return self.kernel_backward(qkv, fc_w, fc_b, dep_w, dout)


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
        # (under mixed precision the table stays float32 while attn is float16)
        bias = ops.transpose(bias, (2, 0, 1)).astype(attn.dtype)  # (nh, N, N)
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
            weight, bias = self.proj.weight * out_scale, self.proj.bias * out_scale
            out = ops.bias_add(self._matmul_t(out, weight.astype(out.dtype)), bias.astype(out.dtype))
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
            self.grouped_conv = GroupedConv2d(k2 * self.head_dim, dim, kernel_conv, self.head_dim)
            self._matmul_nt = ops.BatchMatMul(transpose_b=True)
            # On CPU the whole path runs as one kernel; _convolution is the path everywhere else.
            kernels = conv_path_ops(kernel_conv)
            self.conv_kernel = ConvPathKernel(*kernels) if kernels else None
        if self.use_att and self.use_conv:
            self.rate1 = Parameter(Tensor([0.5], ms.float32), name='rate1')
            self.rate2 = Parameter(Tensor([0.5], ms.float32), name='rate2')

    def _init_attention(self, attn_drop):
        if self.use_att:
            super()._init_attention(attn_drop)

    def _convolution(self, x, out_scale=None):
        """x (B, H, W, C), the map qkv is computed from -> convolution path (B, H, W, C), on the
        whole map, multiplied by out_scale (a (1,) tensor) when given, folded into the fc weights.

        The fc input is qkv, which is linear in x, so f = fc(qkv) is one projection of x, with
        weights fc_w @ W_qkv built per step from the official parameters. Computing f from x as a
        batched matmul that writes the (B, hd*k2, H, W) map the grouped convolution reads costs
        less on CPU than transposing the 3x wider (B, H, W, 3C) qkv map (matmuls run near peak
        here, element-wise transposes at a few GB/s).
        """
        b, h, w, c = x.shape
        nh, hd, k = self.num_heads, self.head_dim, self.kernel_conv
        k2 = k * k
        fc_w = self.fc.weight.reshape(k2, 3 * nh)  # (k2, 3nh): input i = s*nh + head, s in (q, k, v)
        fc_b = self.fc.bias
        if out_scale is not None:  # conv(scale * f) = scale * conv(f): scale the small fc instead
            fc_w, fc_b = fc_w * out_scale, fc_b * out_scale
        # qkv channel i*hd + d; f channel d*k2 + j, the dep_conv input order (group d)
        # f[d*k2 + j] = sum_i fc_w[j, i] * (W_qkv[i*hd + d] . x + b_qkv[i*hd + d]) + fc_b[j]
        wf = ops.matmul(fc_w, self.qkv.weight.reshape(3 * nh, hd * c)).reshape(k2, hd, c)
        wf = ops.transpose(wf, (1, 0, 2)).reshape(1, hd * k2, c)
        bf = ops.tile(fc_b.reshape(1, k2), (hd, 1))  # (hd, k2)
        if self.qkv.has_bias:
            bf = bf + ops.matmul(fc_w, self.qkv.bias.reshape(3 * nh, hd)).swapaxes(0, 1)
        # (B, H*W, C) -> (B, hd*k2, H*W); the convolution zero-pads f, bias included, as the official one
        f = self._matmul_nt(ops.tile(wf, (b, 1, 1)), x.reshape(b, h * w, c))
        f = ops.bias_add(f, bf.reshape(-1)).reshape(b, hd * k2, h, w)
        out = self.grouped_conv(f, self.dep_conv.weight)  # (B, C, H, W); output o = d*nh + m, group d
        return ops.transpose(out, (0, 2, 3, 1))

    def _conv_path(self, x, qkv, out_scale=None):
        """The convolution path from x or from qkv = self.qkv(x), whichever the device computes faster."""
        if self.conv_kernel is None or qkv.dtype != ms.float32:
            return self._convolution(x, out_scale)
        k2 = self.kernel_conv * self.kernel_conv
        fc_w, fc_b = self.fc.weight.reshape(k2, 3 * self.num_heads), self.fc.bias
        if out_scale is not None:
            fc_w, fc_b = fc_w * out_scale, fc_b * out_scale
        return self.conv_kernel(qkv, fc_w, fc_b, self.dep_conv.weight)

    def construct(self, x, mask=None):
        qkv = self.qkv(x)  # (the ops path without attention leaves it unused; graph mode drops it)
        if self.use_att and self.use_conv:
            # rate1 * att + rate2 * conv, with each rate folded into that path's weights: a (1,)
            # rate times a (B, H, W, C) map would be a slow broadcasting Mul on CPU
            out = self._window_attention(qkv, mask, self.rate1) + self._conv_path(x, qkv, self.rate2)
        elif self.use_att:
            out = self._window_attention(qkv, mask)
        else:
            out = self._conv_path(x, qkv)
        return self.proj_drop(out)
