"""Window attention for Swin Transformers, plain and ACmix.

Both Cells take the whole (cyclically shifted) map (B, H, W, C) and return a map of the same
shape, so a block treats them alike. For the plain attention this is the usual Swin computation
(the per-token qkv and proj commute with window partitioning). The ACmix one follows the official
`WindowAttention_acmix` (LeapLabTHU/ACmix): qkv runs on the whole shifted map, the convolution
path (fc over the 3*heads q/k/v channels, then a shift-initialised grouped convolution) runs on the
shifted map across window borders and the roll seam, unmasked, with zero padding; the output is
`rate1 * proj(window_attention) + rate2 * conv`, then proj_drop. The convolution path comes in two
formulations (`formulation.py`): portable ops, and a fused C++ kernel on CPU. The kernel also reads
a window-partitioned qkv (and writes the whole map), so there the layer partitions its C-wide input
once and both paths share the qkv of the windows (per token the same values as qkv of the whole map).
"""
import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops
from mindspore.common.initializer import TruncatedNormal, initializer

from .acmix import acmix_paths, check_odd, mixing_rates
from .conv_path import shift_kernels
from .formulation import resolve_formulation
from .precision import cast_to, float32_if_half
from .window_ops import relative_position_index, window_partition, window_reverse_heads


def swin_dense_init():
    """Swin's init of its Dense layers (timm's _init_weights): trunc_normal(std=.02) weights, zero bias;
    keyword arguments of Formulation.dense."""
    return dict(weight_init=TruncatedNormal(0.02), bias_init='zeros')


class WindowAttention(nn.Cell):
    """Multi-head self-attention inside non-overlapping windows, with relative position bias.

    Args:
        dim: channels; num_heads must divide it.
        window_size: side of the square window.
        num_heads: attention heads.
        qkv_bias: bias on the qkv projection.
        qk_scale: overrides head_dim ** -0.5.
        attn_drop, proj_drop: dropout rates.
        formulation: 'portable', 'cpu', a Formulation, or None (the device target decides; see
            formulation.py): how the
            qkv and proj Dense layers take their bias gradients.

    construct(x, mask=None): x (B, H, W, C) with H, W multiples of window_size; mask None or a
    (nW, N, N) additive mask (N = window_size^2). Returns (B, H, W, C).
    """

    def __init__(self, dim, window_size, num_heads, qkv_bias=True, qk_scale=None,
                 attn_drop=0.0, proj_drop=0.0, formulation=None):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f'dim ({dim}) must be divisible by num_heads ({num_heads})')
        self.formulation = resolve_formulation(formulation)
        self.dim = dim
        self.window_size = window_size
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = qk_scale or self.head_dim ** -0.5
        self.qkv = self.formulation.dense(dim, 3 * dim, has_bias=qkv_bias, **swin_dense_init())
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
        self.proj = self.formulation.dense(self.dim, self.dim, **swin_dense_init())
        self.linear = self.formulation.linear()  # proj's computation, with scaled weights
        self.bmm = ops.BatchMatMul()
        self.bmm_nt = ops.BatchMatMul(transpose_b=True)
        self.bias_add = ops.BiasAdd()

    def _window_attention(self, qkv, mask, out_scale=None):
        """qkv (B, H, W, 3C) -> attention output after proj, (B, H, W, C); multiplied by
        out_scale (a (1,) tensor) when given, folded into the proj weights."""
        _, h, w, _ = qkv.shape
        return self._attend(window_partition(qkv, self.window_size), mask, h, w, out_scale)

    def _attend(self, win, mask, h, w, out_scale=None):
        """win (B*nW, N, 3C), the qkv of each window of an (H, W) map in window_partition's order ->
        the attention output after proj on the whole map, (B, H, W, C), multiplied by out_scale as
        in _window_attention."""
        ws, nh, hd = self.window_size, self.num_heads, self.head_dim
        n = ws * ws
        bw = win.shape[0]
        win = ops.transpose(win.reshape(bw, n, 3, nh, hd), (2, 0, 3, 1, 4))  # (3, B*nW, nh, N, hd)
        q, k, v = ops.unbind(win, 0)
        # k enters transposed through the matmul's flag, not a Transpose: on CPU a Transpose keeps
        # a table of 8 bytes per element for the graph's life, and so would its gradient's.
        attn = self.bmm_nt(q * self.scale, k)  # (B*nW, nh, N, N)
        # Under mixed precision the logits, the relative bias, the mask and the softmax are float32,
        # as under apex O1 in the official training (its float16 matmul output meets the float32
        # bias table there, which promotes the sum and so the softmax); attn @ v is float16 again.
        attn = float32_if_half(attn)
        # The relative bias (and the shift mask) are added with BiasAdd over a flattened attn,
        # not with a broadcasting Add: on CPU a broadcasting Add/Mul builds two output-sized
        # index tables (16 B per element, kept for the graph's life) and is several times
        # slower than BiasAdd, which repeats its (C,) operand along the leading axis.
        bias = self.relative_position_bias_table[self.relative_position_index].view(n, n, nh)
        bias = ops.transpose(bias, (2, 0, 1)).astype(attn.dtype)  # (nh, N, N)
        if mask is None:
            attn = self.bias_add(attn.reshape(bw, nh * n * n), bias.reshape(-1))
        else:
            nw = mask.shape[0]
            # (nW, nh, N, N): small, built once per call; the big add then repeats it per image.
            bias = bias.expand_dims(0) + mask.view(nw, 1, n, n).astype(attn.dtype)
            attn = self.bias_add(attn.reshape(bw // nw, nw * nh * n * n), bias.reshape(-1))
        attn = self.attn_drop(ops.softmax(attn.reshape(bw, nh, n, n), axis=-1))
        # The windows go back to the map with their heads merged in one Transpose, and proj (per
        # token) runs on the map: one C-wide Transpose less than swapping heads and tokens first.
        out = self.bmm(cast_to(attn, v.dtype), v)
        out = window_reverse_heads(out, ws, h, w).reshape(-1, self.dim)  # (B*H*W, C)
        if out_scale is None:
            out = self.proj(out)
        else:  # out_scale * proj(out), with the scale on the (C, C) weights, not on the activations
            weight, bias = self.proj.weight * out_scale, self.proj.bias * out_scale
            out = self.linear(out, weight.astype(out.dtype), bias.astype(out.dtype))
        return out.reshape(-1, h, w, self.dim)

    def construct(self, x, mask=None):
        _, h, w, _ = x.shape
        # The C-wide input is partitioned, not the 3C-wide qkv as in the official code: the
        # per-token qkv commutes with the partition, and the Transposes (8 bytes per element
        # kept on CPU) then move a third of the data.
        win = window_partition(x, self.window_size)  # (B*nW, N, C)
        return self.proj_drop(self._attend(self.qkv(win), mask, h, w))


class WindowAttentionACmix(WindowAttention):
    """Swin ACmix: window attention and a grouped-convolution path sharing one qkv projection.

    Extra args:
        kernel_conv: kernel of the convolution path (odd; the official code hard-codes 3).
        paths: 'both' (default, summed with learnable rates), 'attention' or 'conv'.
        learnable_shift: if False the grouped convolution keeps its shift kernels fixed.
        formulation: 'portable', 'cpu', a Formulation, or None (the device target decides; see
            formulation.py).
    """

    def __init__(self, dim, window_size, num_heads, qkv_bias=True, qk_scale=None, attn_drop=0.0,
                 proj_drop=0.0, kernel_conv=3, paths='both', learnable_shift=True, formulation=None):
        check_odd('kernel_conv', kernel_conv)
        self.use_att, self.use_conv = acmix_paths(paths)
        super().__init__(dim, window_size, num_heads, qkv_bias, qk_scale, attn_drop, proj_drop, formulation)
        self.kernel_conv = kernel_conv
        if self.use_conv:
            k2 = kernel_conv * kernel_conv
            # Unlike the ResNet layer, the Swin fc has a bias; dep_conv has none (see acmix.py).
            # Both Cells only hold the parameters (official names and shapes); the path computes
            # with their weights.
            self.fc = nn.Conv2d(3 * num_heads, k2, 1, pad_mode='valid', has_bias=True)
            self.dep_conv = nn.Conv2d(k2 * self.head_dim, dim, kernel_conv, pad_mode='pad',
                                      padding=kernel_conv // 2, group=self.head_dim, has_bias=False,
                                      weight_init=Tensor(shift_kernels(dim, kernel_conv)))
            self.dep_conv.weight.requires_grad = learnable_shift
            self.conv_path = self.formulation.convolution_path(num_heads, self.head_dim, dim, kernel_conv,
                                                               channels_last=True)
        # A convolution path that reads a window-partitioned qkv lets both paths share the qkv of the
        # partitioned C-wide input, as the plain attention does; otherwise the 3C-wide qkv of the
        # whole map is partitioned for the attention (on CPU a Transpose keeps a table of 8 bytes
        # per element for the graph's life, and so does its gradient's).
        self.windowed = self.use_att and self.use_conv and getattr(self.conv_path, 'accepts_windows', False)
        if self.use_att and self.use_conv:
            self.rate1, self.rate2 = mixing_rates()

    def _init_attention(self, attn_drop):
        if self.use_att:
            super()._init_attention(attn_drop)

    def _convolution(self, qkv, out_scale=None):
        """The convolution path of qkv (B, H, W, 3C) on the whole (shifted) map -> (B, H, W, C); when
        windowed, qkv is window-partitioned, (B, H/ws, W/ws, N, 3C), and the output the same map,
        multiplied by out_scale (a (1,) tensor) when given, folded into the fc weights:
        conv(scale * f) == scale * conv(f), and the zero padding of f commutes with the scale."""
        k2 = self.kernel_conv * self.kernel_conv
        fc_weight, fc_bias = self.fc.weight.reshape(k2, 3 * self.num_heads), self.fc.bias
        if out_scale is not None:
            fc_weight, fc_bias = fc_weight * out_scale, fc_bias * out_scale
        return self.conv_path(qkv, fc_weight, fc_bias, self.dep_conv.weight)

    def construct(self, x, mask=None):
        if self.windowed:
            b, h, w, c = x.shape
            ws = self.window_size
            qkv = self.qkv(window_partition(x, ws))  # (B*nW, N, 3C)
            # (B, H/ws, W/ws, N, 3C) -> (B, H, W, C), the convolution of the whole map
            conv = self._convolution(qkv.view(b, h // ws, w // ws, ws * ws, 3 * c), self.rate2)
            return self.proj_drop(self._attend(qkv, mask, h, w, self.rate1) + conv)
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
