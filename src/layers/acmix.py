"""ACmix for convolutional networks: 7x7 local-window self-attention and a shift-initialised
grouped convolution that share one set of 1x1 q/k/v projections (Pan et al., CVPR 2022, Fig. 2).

Numerically this follows the official `ACmix` of LeapLabTHU/ACmix (ResNet/test_bottleneck.py);
see `shared/notes/official-acmix-numerics.md`. Where the official code crashes on valid input
this layer does better, and behaves identically everywhere else:

* odd feature sizes at stride 2 give ceil(h/2) x ceil(w/2), as a convolution does;
* `kernel_conv` may be any odd size (the official padding is hard-coded for 3);
* `dilation` dilates the attention window (and the convolution path), instead of crashing;
* the positional grid is built in the input's dtype, so fp16 (mixed precision) runs.

Implementation notes (MindSpore CPU; measured on the training step of acmix_resnet26):

* The attention is blocked: each block of ~7x7 queries attends with one small matmul to the key
  rectangle covering its windows, and a constant -inf mask keeps each query's 7x7 window. Keys and
  values are read ~3.5x instead of the 49x of an unfold of every window; _BlockAttention has a
  hand-written backward.
* No Transpose kernels on large tensors: on CPU each keeps an index table of 8 bytes per element
  for the graph's life. Axes are swapped by exact matmuls with identity matrices instead.
* No broadcasting Mul/Add/Sub on large tensors (they keep 16 bytes per element the same way);
  broadcasts are bias_add, matmuls with ones, or scalars.
* The grouped dep_conv is a batched matmul and a fold (Col2Im): a grouped Conv2DBackpropFilter is
  slower on CPU than all the rest of the layer. fc is folded into its weights.
"""
import numpy as np
import mindspore as ms
from mindspore import nn, ops, Parameter, Tensor
from mindspore.ops import constexpr

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


def mirrored_taps(kernel_size):
    """int32 index k*k - 1 - t for tap t = a*k + e: gathering a flattened k x k kernel with it
    rotates the kernel by 180 degrees (a convolution's adjoint uses the mirrored taps)."""
    return Tensor(np.arange(kernel_size * kernel_size)[::-1].copy(), ms.int32)


def _check_odd(name, value):
    if not isinstance(value, int) or value < 1 or value % 2 == 0:
        raise ValueError(f'{name} must be a positive odd integer, got {value!r}')


# Shape-only helpers of the blocked attention, evaluated once at graph compile time.
@constexpr
def _blocks(n_out, stride, dilation, kernel):
    """(queries per block, blocks, keys per block) along an axis with n_out attention outputs."""
    # ~7 queries a side balances the wasted logits ((bq + 6) / 7 per axis) against the overlap
    # of the key rectangles ((bq + 6) / bq per axis); a size that divides n_out avoids padding.
    sizes = range(min(4, n_out), min(8, n_out) + 1)
    bq = min(sizes, key=lambda z: (-(-n_out // z) * z, abs(z - 7.5)))
    return bq, -(-n_out // bq), stride * (bq - 1) + dilation * (kernel - 1) + 1


@constexpr
def _window_mask(bq_h, r_h, bq_w, r_w, stride, dilation, kernel, dtype):
    """(bq_h * bq_w * r_h * r_w,), order [a][c][u][v]: 0 where key (u, v) of a block's key
    rectangle lies in the window of query (a, c) of the block, -inf elsewhere."""
    def axis_mask(bq, r):
        off = np.arange(r)[None, :] - stride * np.arange(bq)[:, None]  # (bq, r)
        inside = (off >= 0) & (off % dilation == 0) & (off // dilation < kernel)
        return np.where(inside, 0.0, -np.inf)
    mask = axis_mask(bq_h, r_h)[:, None, :, None] + axis_mask(bq_w, r_w)[None, :, None, :]
    return Tensor(mask.reshape(-1), dtype)


@constexpr
def _eye(n, m, dtype, scale=1.0):
    """n stacked m x m identity matrices, times scale."""
    return Tensor(np.broadcast_to(np.eye(m) * scale, (n, m, m)).copy(), dtype)


class _SwapLastAxes(nn.Cell):
    """(N, a, m) -> (N, m, a) by a batched matmul with an identity matrix `eye` (N, e, e), e = a
    or m (the cost is e multiply-adds per element, so pass the smaller). Exact, and unlike the CPU
    Transpose kernel it keeps no per-element index table. The backward is the same swap back."""

    def __init__(self):
        super().__init__()
        self.bmm_nt = ops.BatchMatMul(transpose_b=True)
        self.bmm_tn = ops.BatchMatMul(transpose_a=True)
        self.zeros_like = ops.ZerosLike()

    def construct(self, x, eye):
        if eye.shape[2] == x.shape[2]:
            return self.bmm_nt(eye, x)  # I_m @ x^T
        return self.bmm_tn(x, eye)  # x^T @ I_a

    def bprop(self, x, eye, out, dout):
        if eye.shape[2] == x.shape[2]:
            return self.bmm_tn(dout, eye), self.zeros_like(eye)
        return self.bmm_nt(eye, dout), self.zeros_like(eye)


class _BlockAttention(nn.Cell):
    """Masked attention of query blocks over their key rectangles, with a hand-written backward.

    q (N, hd, bq), k (N, hd, r), v (N, hd, r), mask (bq * r,) of 0 / -inf.
    Returns (out (N, hd, bq), att (N, bq, r)); only `out` may receive a gradient.

    Autodiff of this forward would transpose att and k explicitly for the matmul gradients
    (Transpose kernels keep 8 bytes per element for the graph's life on CPU), reduce the softmax
    gradient with ReduceSum (slower than all the matmuls together) and compute a gradient for the
    constant mask. This backward uses the transposed-operand forms of BatchMatMul instead.
    """

    def __init__(self):
        super().__init__()
        self.bmm = ops.BatchMatMul()
        self.bmm_nt = ops.BatchMatMul(transpose_b=True)
        self.bmm_tn = ops.BatchMatMul(transpose_a=True)
        self.matmul = ops.MatMul()
        self.bias_add = ops.BiasAdd()
        self.softmax = ops.Softmax(-1)
        self.ones = ops.Ones()
        self.zeros_like = ops.ZerosLike()

    def _weights(self, q, k, mask):
        n, bq, r = q.shape[0], q.shape[2], k.shape[2]
        # bias_add broadcasts the mask along N without the index tables that a broadcasting Add
        # builds on CPU (16 bytes per output element, kept for the graph's life).
        logits = self.bias_add(self.bmm_tn(q, k).reshape(n, bq * r), mask)  # q^T k
        return self.softmax(logits.reshape(n, bq, r))  # exactly 0 outside each query's window

    def construct(self, q, k, v, mask):
        att = self._weights(q, k, mask)
        return self.bmm_nt(v, att), att  # v att^T: (N, hd, bq)

    def bprop(self, q, k, v, mask, out, dout):
        att, dout = out[1], dout[0]  # (N, bq, r); the layer does not use att
        n, bq, r = att.shape
        hd = q.shape[1]
        datt = self.bmm_tn(dout, v)  # dout^T v: (N, bq, r)
        dv = self.bmm(dout, att)  # (N, hd, r)
        # Softmax: dlogits = p - att * c with p = att * datt and c = sum_r p per query. Only p is
        # formed at full size; c enters through (N, hd, bq)-sized products, so the backward holds
        # two (N, bq, r) tensors at a time instead of four.
        p = att * datt
        c = self.matmul(p.reshape(n * bq, r), self.ones((r, 1), p.dtype)).reshape(n, 1, bq)
        c = self.bmm(self.ones((n, hd, 1), p.dtype), c)  # (N, hd, bq): c copied over hd
        dq = self.bmm_nt(k, p) - c * self.bmm_nt(k, att)  # k dlogits^T: (N, hd, bq)
        dk = self.bmm(q, p) - self.bmm(q * c, att)  # q dlogits: (N, hd, r)
        return dq, dk, dv, self.zeros_like(mask)


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
            self.block_attention = _BlockAttention()  # no parameters
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
            self.mirrored_taps = mirrored_taps(kernel_conv)
            self.bmm = ops.BatchMatMul()
        self.swap = _SwapLastAxes()  # no parameters
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

    def _attention(self, q, k, v):
        b, _, h, w = q.shape
        bh, hd, s = b * self.head, self.head_dim, self.stride
        h_out, w_out = (h - 1) // s + 1, (w - 1) // s + 1
        if min(h, w) <= self.padding_att:
            raise ValueError('LocalAttentionACmix: reflection padding needs feature maps larger '
                             'than the padding of the attention window; the input is too small '
                             'for this layer.')
        # Blocked local attention: the output grid is cut into blocks of bq_h x bq_w queries; all
        # queries of a block attend, by one small matmul, to the rectangle of keys that covers
        # their windows (r_h x r_w), and a constant -inf bias removes the keys outside each
        # query's own window. This computes 3-4x more logits than the 49 needed, but as batched
        # GEMMs, reading k and v ~3.5x (an unfold of every window reads them 49x).
        ka, d = self.kernel_att, self.dilation
        (bq_h, nb_h, r_h), (bq_w, nb_w, r_w) = _blocks(h_out, s, d, ka), _blocks(w_out, s, d, ka)
        nb, bq, r = nb_h * nb_w, bq_h * bq_w, r_h * r_w
        dtype = q.dtype
        pe = ops.tile(self._position_encoding(h, w, dtype), (bh, 1, 1, 1))  # (bh, hd, h, w)
        # Head-major split: channel c belongs to head c // head_dim.
        q_att = q.view(bh, hd, h, w)
        if s > 1:
            q_att = q_att[:, :, ::s, ::s]
        # Queries past the output edge (when the block size does not divide it) are zeros and
        # cropped at the end; keys past the padded map are zeros that no real query sees.
        q_att = self._pad_end(q_att, nb_h * bq_h - h_out, nb_w * bq_w - w_out)
        q_blk = ops.unfold(q_att, kernel_size=(bq_h, bq_w), dilation=1, padding=0,
                           stride=(bq_h, bq_w))  # (bh, hd * bq, nb): non-overlapping blocks
        # The q-only scaling rides on the identity of the swap (exact: one multiply per element).
        q_blk = self._blocks_first(q_blk, nb_h, nb_w, self.scaling).view(bh * nb, hd, bq)
        # The official logit is q . (k_nbr + pe_centre - pe_nbr). The q . pe_centre term is the
        # same for all window positions, so it cancels in the softmax and is left out; reflection
        # padding is linear, so pad(k) - pad(pe) == pad(k - pe).
        k_reg = self._regions(self.pad_att(k.view(bh, hd, h, w) - pe), nb_h, bq_h, r_h, nb_w, bq_w, r_w)
        k_reg = self._blocks_first(k_reg, nb_h, nb_w).view(bh * nb, hd, r)
        v_reg = self._regions(self.pad_att(v.view(bh, hd, h, w)), nb_h, bq_h, r_h, nb_w, bq_w, r_w)
        v_reg = self._blocks_first(v_reg, nb_h, nb_w).view(bh * nb, hd, r)
        mask = _window_mask(bq_h, r_h, bq_w, r_w, s, d, ka, dtype)
        out, _ = self.block_attention(q_blk, k_reg, v_reg, mask)  # (bh * nb, hd, bq)
        out = self._blocks_last(out.view(bh, nb_w, nb_h, hd * bq), nb_h, nb_w)  # (bh, hd * bq, nb)
        out = ops.fold(out, Tensor([nb_h * bq_h, nb_w * bq_w], ms.int32), kernel_size=(bq_h, bq_w),
                       dilation=1, padding=0, stride=(bq_h, bq_w))  # (bh, hd, h_out+, w_out+)
        out = out.view(b, self.out_planes, nb_h * bq_h, nb_w * bq_w)
        if nb_h * bq_h != h_out or nb_w * bq_w != w_out:
            out = out[:, :, :h_out, :w_out]
        return out

    # Blocks sit last in unfold's (N, rows, nb_h * nb_w) output and must lead for the batched
    # matmuls. A Transpose would do it, but on CPU every Transpose kernel keeps an index table of
    # 8 bytes per element for the graph's life (about 1 GB over this model's training graph), so
    # the axes are swapped by matmuls with identity matrices, which are exact: first nb_w, then
    # nb_h, so each costs nb_w or nb_h multiply-adds per element rather than nb_h * nb_w.
    def _blocks_first(self, x, nb_h, nb_w, scale=1.0):
        """(N, rows, nb_h * nb_w) -> (N, nb_w, nb_h, rows), times scale."""
        n, rows = x.shape[0], x.shape[1]
        x = self.swap(x.view(n, rows * nb_h, nb_w), _eye(n, nb_w, x.dtype, scale))  # (n, nb_w, rows*nb_h)
        return self.swap(x.view(n * nb_w, rows, nb_h), _eye(n * nb_w, nb_h, x.dtype)).view(n, nb_w, nb_h, rows)

    def _blocks_last(self, x, nb_h, nb_w):
        """(N, nb_w, nb_h, rows) -> (N, rows, nb_h * nb_w), the inverse of _blocks_first."""
        n, rows = x.shape[0], x.shape[3]
        x = self.swap(x.view(n * nb_w, nb_h, rows), _eye(n * nb_w, nb_h, x.dtype))  # (n*nb_w, rows, nb_h)
        x = self.swap(x.view(n, nb_w, rows * nb_h), _eye(n, nb_w, x.dtype))  # (n, rows*nb_h, nb_w)
        return x.view(n, rows, nb_h * nb_w)

    @staticmethod
    def _pad_end(x, ph, pw):
        """Zero-pad the bottom and right of (N, C, H, W) by ph and pw."""
        if ph <= 0 and pw <= 0:
            return x
        return ops.pad(x, (0, max(pw, 0), 0, max(ph, 0)))

    def _regions(self, x_pad, nb_h, bq_h, r_h, nb_w, bq_w, r_w):
        """The key rectangle of every query block: (N, C * r_h * r_w, nb_h * nb_w)."""
        hp, wp = x_pad.shape[2], x_pad.shape[3]
        s = self.stride
        x_pad = self._pad_end(x_pad, s * bq_h * (nb_h - 1) + r_h - hp, s * bq_w * (nb_w - 1) + r_w - wp)
        return ops.unfold(x_pad, kernel_size=(r_h, r_w), dilation=1, padding=0,
                          stride=(s * bq_h, s * bq_w))  # channel-major rows [c][u][v]

    def _convolution(self, qkv, rate=None):
        """The convolution path, times `rate` if given. qkv: (b, 3 * out_planes, h, w)."""
        b, _, h, w = qkv.shape
        hd, k2, kc, c3 = self.head_dim, self.kernel_conv * self.kernel_conv, self.kernel_conv, 3 * self.head
        opg = self.out_planes // hd  # dep_conv output channels per group
        # (b, 3*head, head_dim*h*w): channels [q heads, k heads, v heads], as the official fc sees
        # them (it treats (head_dim, h*w) as its spatial plane).
        qkv = qkv.view(b, c3, hd * h * w)
        # -> (b * hd, 3*head, h*w) by two identity-matmul swaps (see _blocks_first), so that
        # head_dim, dep_conv's group, becomes a batch axis.
        qkv = self.swap(qkv, _eye(b, c3, qkv.dtype))  # (b, hd*h*w, 3*head)
        qkv = self.swap(qkv.view(b * hd, h * w, c3), _eye(b * hd, c3, qkv.dtype))
        # fc (1x1, 3*head -> k2) and dep_conv (grouped k x k; group d: input channels d*k2 + j,
        # output channels d*opg + o) are both linear, so they are applied as one batched matmul
        # followed by a fold; as a grouped Conv2D, dep_conv's weight gradient alone costs more on
        # CPU than all the rest of the layer. Per group d and pixel p, for output channel o and
        # mirrored tap t': taps[(o, t'), p] = sum_c (sum_j W[d*opg + o, j, t] fc[j, c]) qkv[c, p].
        # Folding (Col2Im, the adjoint of unfold) then adds taps[(o, t'), p] into output pixel
        # p + offset(t') = p - offset(t), which is the convolution's gather. Summing over j
        # before p differs from the official order by fp32 rounding only.
        weight = self.dep_conv.weight
        if rate is not None:
            # Scaling the (small) weight instead of the output: the output then need not be kept
            # for rate's gradient.
            weight = weight * rate
        weight = weight.view(hd, opg, k2, kc * kc)
        weight = ops.gather(weight, self.mirrored_taps, 3)  # taps mirrored
        weight = ops.transpose(weight, (0, 1, 3, 2)).reshape(hd * opg * kc * kc, k2)
        weight = ops.matmul(weight, self.fc.weight.view(k2, c3)).view(1, hd, opg * kc * kc, c3)
        weight = ops.tile(weight, (b, 1, 1, 1)).view(b * hd, opg * kc * kc, c3)
        taps = self.bmm(weight, qkv).view(b, self.out_planes * kc * kc, h * w)  # rows [d][o][t']
        pad = self.dilation * (kc // 2)
        out = ops.fold(taps, Tensor([h, w], ms.int32), kernel_size=kc, dilation=self.dilation,
                       padding=pad, stride=1)  # (b, out_planes, h, w)
        if self.stride > 1:
            out = out[:, :, ::self.stride, ::self.stride]
        return out

    def construct(self, x):
        # conv1, conv2 and conv3 (kept as cells for their parameters and init) run as one 1x1
        # convolution: one pass over x forward and backward, one input gradient instead of three
        # summed, and the convolution path takes its output as is. qkv: (b, 3 * out_planes, h, w).
        weight = ops.cat((self.conv1.weight, self.conv2.weight, self.conv3.weight))
        bias = ops.cat((self.conv1.bias, self.conv2.bias, self.conv3.bias))
        qkv = ops.bias_add(ops.conv2d(x, weight, pad_mode='valid'), bias)
        if not self.use_att:
            return self._convolution(qkv)
        q, k, v = ops.split(qkv, self.out_planes, 1)
        if not self.use_conv:
            return self._attention(q, k, v)
        return self.rate1 * self._attention(q, k, v) + self._convolution(qkv, self.rate2)
