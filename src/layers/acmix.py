"""ACmix for convolutional networks: 7x7 local-window self-attention and a shift-initialised
grouped convolution that share one set of 1x1 q/k/v projections (Pan et al., CVPR 2022, Fig. 2).

Numerically this follows the official `ACmix` of LeapLabTHU/ACmix (ResNet/test_bottleneck.py);
see `shared/notes/official-acmix-numerics.md`. Where the official code crashes on valid input
this layer does better, and behaves identically everywhere else:

* odd feature sizes at stride 2 give ceil(h/2) x ceil(w/2), as a convolution does;
* `kernel_conv` may be any odd size (the official padding is hard-coded for 3);
* `dilation` dilates the attention window (and the convolution path), instead of crashing;
* the positional grid is built in the input's dtype, so fp16 (mixed precision) runs.

The attention is computed without materialising a (B*heads, head_dim, 49, H, W) tensor: keys and
values are unfolded one kernel row at a time (7 neighbours instead of 49), in sequence, so the
forward's transient memory stays near 7x the size of k.
"""
import numpy as np
import mindspore as ms
from mindspore import nn, ops, Parameter, Tensor

ACMIX_PATHS = ('both', 'attention', 'conv')


def shift_kernels(out_channels, kernel_size):
    """Grouped-conv weights that make input channel i of each group a pure shift to (i // k, i % k).

    Returns a float32 array of shape (out_channels, k*k, k, k).
    """
    k2 = kernel_size * kernel_size
    kernel = np.zeros((k2, kernel_size, kernel_size), np.float32)
    for i in range(k2):
        kernel[i, i // kernel_size, i % kernel_size] = 1.0
    return np.tile(kernel[None], (out_channels, 1, 1, 1))


def _check_odd(name, value):
    if not isinstance(value, int) or value < 1 or value % 2 == 0:
        raise ValueError(f'{name} must be a positive odd integer, got {value!r}')


class LocalAttentionACmix(nn.Cell):
    """The ResNet ACmix layer (replaces the 3x3 convolution of a bottleneck).

    Args:
        in_planes, out_planes: channels in and out.
        kernel_att: side of the local attention window (odd).
        head: number of attention heads; out_planes must be divisible by it.
        kernel_conv: kernel of the grouped convolution path (odd).
        stride: 1 or 2 (any positive integer works).
        dilation: dilation of the attention window and of the convolution path.
        paths: 'both' (attention + convolution summed with learnable rates, the paper's ACmix),
            'attention' (attention path only) or 'conv' (convolution path only).
        learnable_shift: if False the grouped convolution keeps its shift kernels fixed.

    Input (B, in_planes, H, W); output (B, out_planes, ceil(H/stride), ceil(W/stride)).
    Parameter names follow the official module, so converted state_dicts load directly.
    """

    def __init__(self, in_planes, out_planes, kernel_att=7, head=4, kernel_conv=3, stride=1,
                 dilation=1, paths='both', learnable_shift=True):
        super().__init__()
        _check_odd('kernel_att', kernel_att)
        _check_odd('kernel_conv', kernel_conv)
        if out_planes % head:
            raise ValueError(f'out_planes ({out_planes}) must be divisible by head ({head})')
        if stride < 1 or dilation < 1:
            raise ValueError(f'stride and dilation must be >= 1, got {stride} and {dilation}')
        if paths not in ACMIX_PATHS:
            raise ValueError(f'paths must be one of {ACMIX_PATHS}, got {paths!r}')
        self.out_planes = out_planes
        self.head = head
        self.head_dim = out_planes // head
        self.kernel_att = kernel_att
        self.kernel_conv = kernel_conv
        self.stride = stride
        self.dilation = dilation
        self.use_att = paths in ('both', 'attention')
        self.use_conv = paths in ('both', 'conv')
        self.learnable_shift = learnable_shift
        # As in the official code the scale sits on q, so it also scales the positional term.
        self.scaling = float(self.head_dim) ** -0.5

        self.conv1 = nn.Conv2d(in_planes, out_planes, 1, pad_mode='valid', has_bias=True)
        self.conv2 = nn.Conv2d(in_planes, out_planes, 1, pad_mode='valid', has_bias=True)
        self.conv3 = nn.Conv2d(in_planes, out_planes, 1, pad_mode='valid', has_bias=True)
        if self.use_att:
            self.conv_p = nn.Conv2d(2, self.head_dim, 1, pad_mode='valid', has_bias=True)
            self.padding_att = (dilation * (kernel_att - 1) + 1) // 2
            self.pad_att = nn.ReflectionPad2d(self.padding_att)
        if self.use_conv:
            # The official fc has no bias in the ResNet layer (the Swin layer has one).
            self.fc = nn.Conv2d(3 * head, kernel_conv * kernel_conv, 1, pad_mode='valid', has_bias=False)
            # The official dep_conv ends up without bias: its bias is assigned init_rate_0(...) == None.
            self.dep_conv = nn.Conv2d(
                kernel_conv * kernel_conv * self.head_dim, out_planes, kernel_conv, stride=stride,
                pad_mode='pad', padding=dilation * (kernel_conv // 2), dilation=dilation,
                group=self.head_dim, has_bias=False,
                weight_init=Tensor(shift_kernels(out_planes, kernel_conv)))
            self.dep_conv.weight.requires_grad = learnable_shift
        if self.use_att and self.use_conv:
            self.rate1 = Parameter(Tensor([0.5], ms.float32), name='rate1')
            self.rate2 = Parameter(Tensor([0.5], ms.float32), name='rate2')

    @property
    def min_input_size(self):
        """Smallest feature-map side this layer takes: reflection padding must be smaller than the map."""
        return self.padding_att + 1 if self.use_att else 1

    def _position_encoding(self, h, w, dtype):
        # (1, 2, h, w): channel 0 varies along the width (x), channel 1 along the height (y).
        loc_w = ops.tile(ops.linspace(-1.0, 1.0, w).view(1, 1, 1, w), (1, 1, h, 1))
        loc_h = ops.tile(ops.linspace(-1.0, 1.0, h).view(1, 1, h, 1), (1, 1, 1, w))
        loc = ops.cat((loc_w, loc_h), 1).astype(dtype)
        return self.conv_p(loc)  # (1, head_dim, h, w)

    def _window_row(self, x_pad, ki, h_out, w_out):
        """The kernel row `ki` of every attention window: (N, C, kernel_att, h_out * w_out)."""
        n, c = x_pad.shape[0], x_pad.shape[1]
        s, d = self.stride, self.dilation
        start = ki * d
        # Rows start, start+s, ...; the row stride is taken by unfold, because the gradient of a
        # strided slice over rows alone crashes on CPU.
        rows = x_pad[:, :, start:start + s * (h_out - 1) + 1, :]
        cols = ops.unfold(rows, kernel_size=(1, self.kernel_att), dilation=(1, d), padding=0,
                          stride=(s, s))  # (N, C * kernel_att, h_out * w_out), channel-major
        return cols.view(n, c, self.kernel_att, h_out * w_out)

    def _attention(self, q, k, v):
        b, _, h, w = q.shape
        bh, hd, s, ka = b * self.head, self.head_dim, self.stride, self.kernel_att
        h_out, w_out = (h - 1) // s + 1, (w - 1) // s + 1
        length = h_out * w_out
        if min(h, w) <= self.padding_att:
            raise ValueError('LocalAttentionACmix: reflection padding needs feature maps larger '
                             'than the padding of the attention window; the input is too small '
                             'for this layer.')
        # On CPU, a MindSpore Mul/Add/Sub whose operands differ in shape keeps index tables of
        # 16 bytes per output element for the life of the compiled graph (outside the memory pool,
        # so never reused), and it and ReduceSum are several times slower than equal-shape ops and
        # matmuls. So operands are tiled to equal shapes, and the sums over head_dim and over a
        # kernel row are matmuls with a ones vector.
        dtype = q.dtype
        sum_over_hd = ops.ones((1, hd), dtype)
        copy_over_hd = ops.ones((hd, 1), dtype)
        sum_over_row = ops.ones((1, ka), dtype)
        pe = ops.tile(self._position_encoding(h, w, dtype), (bh, 1, 1, 1))
        # Head-major split: channel c belongs to head c // head_dim.
        q_att = q.view(bh, hd, h, w) * self.scaling
        if s > 1:
            q_att = q_att[:, :, ::s, ::s]
        q_att = ops.tile(q_att.reshape(bh, hd, 1, length), (1, 1, ka, 1))  # (bh, hd, ka, L)
        # The official logit is q . (k_nbr + pe_centre - pe_nbr). The q . pe_centre term is the
        # same for all window positions, so it cancels in the softmax and is left out; reflection
        # padding is linear, so pad(k) - pad(pe) == pad(k - pe).
        k_pad = self.pad_att(k.view(bh, hd, h, w) - pe)
        # ops.depend chains each kernel row after the previous one, so only one row of unfolded
        # keys (or values) is alive at a time instead of all of them at once.
        logits, prev = (), q_att
        for ki in range(ka):
            k_row = self._window_row(ops.depend(k_pad, prev), ki, h_out, w_out)  # (bh, hd, ka, L)
            prev = ops.matmul(sum_over_hd, (q_att * k_row).view(bh, hd, ka * length))  # (bh, 1, ka*L)
            logits += (prev.view(bh, ka, length),)
        att = ops.softmax(ops.cat(logits, 1), axis=1)  # (bh, ka*ka, L), j = ki*ka + kj
        v_pad = self.pad_att(ops.depend(v, att).view(bh, hd, h, w))
        out, prev = None, att
        for ki in range(ka):
            att_row = ops.depend(att, prev)[:, ki * ka:(ki + 1) * ka].reshape(bh, 1, ka * length)
            att_row = ops.matmul(copy_over_hd, att_row)  # (bh, hd, ka*L)
            v_row = self._window_row(ops.depend(v_pad, prev), ki, h_out, w_out)
            weighted = (v_row.view(bh, hd, ka * length) * att_row).view(bh * hd, ka, length)
            term = ops.matmul(sum_over_row, weighted)  # (bh*hd, 1, L)
            out = term if out is None else out + term
            prev = out
        return out.view(b, self.out_planes, h_out, w_out)

    def _convolution(self, q, k, v):
        b, _, h, w = q.shape
        hd, k2 = self.head_dim, self.kernel_conv * self.kernel_conv
        # (b, 3*head, head_dim, h*w): channels [q heads, k heads, v heads]; the 1x1 fc treats
        # (head_dim, h*w) as its spatial plane, as the official code does.
        qkv = ops.cat((q.view(b, self.head, hd, h * w), k.view(b, self.head, hd, h * w),
                       v.view(b, self.head, hd, h * w)), 1)
        f = self.fc(qkv)  # (b, k2, hd, h*w)
        f = ops.transpose(f, (0, 2, 1, 3)).reshape(b, hd * k2, h, w)  # channel = d * k2 + j
        return self.dep_conv(f)

    def construct(self, x):
        q, k, v = self.conv1(x), self.conv2(x), self.conv3(x)
        if self.use_att and self.use_conv:
            return self.rate1 * self._attention(q, k, v) + self.rate2 * self._convolution(q, k, v)
        if self.use_att:
            return self._attention(q, k, v)
        return self._convolution(q, k, v)
