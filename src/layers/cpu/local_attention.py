"""The blocked local-window attention of the ResNet ACmix layer, tuned for MindSpore's CPU kernels.

The same blocks, key rectangles and mask as the portable `..local_attention.LocalAttention`, built
from CPU-specific forms:

* No Transpose kernels on large tensors: on CPU each keeps an index table of 8 bytes per element
  for the graph's life. Axes are swapped by matmuls
  with identity matrices instead, which are exact on CPU (not on devices whose fp32 matmuls may
  run in reduced precision: that is why this is the CPU formulation only).
* No broadcasting Mul/Add/Sub on large tensors (they keep 16 bytes per element the same way);
  broadcasts are BiasAdd, matmuls with ones, or tiles of small tensors.
* Blocks and key rectangles are gathered with Im2Col (`ops.unfold`) and the output scattered with
  Col2Im (`ops.fold`), and the attention core has a hand-written backward (_BlockAttention).
"""
import mindspore as ms
from mindspore import Tensor, nn, ops

from ..local_attention import block_geometry, pad_end, window_mask
from ..precision import cast_to, float32_if_half
from .swap import SwapLastAxes, identity_stack


class _BlockAttention(nn.Cell):
    """Masked attention of query blocks over their key rectangles, with a hand-written backward.

    q (N, hd, bq), k (N, hd, r), v (N, hd, r), mask (bq * r,) of 0 / MASK_NEGATIVE.
    Returns (out (N, hd, bq), att (N, bq, r)); only `out` may receive a gradient.

    Autodiff of this forward would transpose att and k explicitly for the matmul gradients
    (Transpose kernels keep 8 bytes per element for the graph's life on CPU), reduce the softmax
    gradient with ReduceSum (slower than all the matmuls together) and compute a gradient for the
    constant mask. This backward uses the transposed-operand forms of BatchMatMul instead.

    Under mixed precision (float16 inputs) the logits, the mask and the softmax are float32, as apex O1
    keeps the official layer's logit sum and softmax, and the forward's matmuls float16, as in the
    portable formulation. The backward runs in float32: it folds the softmax gradient into matmuls with
    the forward's operands, so its softmax part is float32 only if they are (this formulation runs on
    CPU only, where float16 matmuls are no faster). The casts sit where the values are used: amp O2
    casts the float inputs of every function a float16 Cell calls (its methods and bprop included) to
    float16.
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
        # BiasAdd broadcasts the mask along N without the index tables that a broadcasting Add
        # builds on CPU (16 bytes per output element, kept for the graph's life).
        logits = float32_if_half(self.bmm_tn(q, k)).reshape(n, bq * r)  # q^T k
        logits = self.bias_add(logits, cast_to(mask, logits.dtype))
        return self.softmax(logits.reshape(n, bq, r))  # exactly 0 outside each query's window

    def construct(self, q, k, v, mask):
        att = self._weights(q, k, mask)  # float32 if q is half
        return self.bmm_nt(v, cast_to(att, v.dtype)), att  # v att^T: (N, hd, bq)

    def bprop(self, q_in, k_in, v_in, mask, out, dout):
        q, k, v = float32_if_half(q_in), float32_if_half(k_in), float32_if_half(v_in)
        # (N, bq, r); the layer does not use att
        att, dout = float32_if_half(out[1]), float32_if_half(dout[0])
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
        return cast_to(dq, q_in.dtype), cast_to(dk, k_in.dtype), cast_to(dv, v_in.dtype), self.zeros_like(mask)


class BlockedLocalAttention(nn.Cell):
    """Blocked k x k local-window attention, CPU formulation. Same interface and result as
    `..local_attention.LocalAttention`: construct(q, k, v, pe) with q, k, v (B, C, H, W) and pe
    (1, head_dim, H, W) -> (B, C, ceil(H/s), ceil(W/s))."""

    def __init__(self, head, head_dim, kernel_size, stride, dilation, scaling):
        super().__init__()
        self.head, self.head_dim = head, head_dim
        self.channels = head * head_dim
        self.kernel_size, self.stride, self.dilation = kernel_size, stride, dilation
        self.scaling = scaling
        self.pad = nn.ReflectionPad2d((dilation * (kernel_size - 1) + 1) // 2)
        self.block_attention = _BlockAttention()
        self.swap = SwapLastAxes()

    def construct(self, q, k, v, pe):
        b, _, h, w = q.shape
        bh, hd, s = b * self.head, self.head_dim, self.stride
        h_out, w_out = (h - 1) // s + 1, (w - 1) // s + 1
        ka, d = self.kernel_size, self.dilation
        (bq_h, nb_h, r_h), (bq_w, nb_w, r_w) = block_geometry(h_out, s, d, ka), block_geometry(w_out, s, d, ka)
        nb, bq, r = nb_h * nb_w, bq_h * bq_w, r_h * r_w
        pe = ops.tile(pe, (bh, 1, 1, 1))  # (bh, hd, h, w): a tile, not a broadcasting Sub
        # Head-major split: channel c belongs to head c // head_dim.
        q_att = q.view(bh, hd, h, w)
        if s > 1:
            q_att = q_att[:, :, ::s, ::s]
        # Queries past the output edge (when the block size does not divide it) are zeros and
        # cropped at the end; keys past the padded map are zeros that no real query sees.
        q_att = pad_end(q_att, nb_h * bq_h - h_out, nb_w * bq_w - w_out)
        q_blk = ops.unfold(q_att, kernel_size=(bq_h, bq_w), dilation=1, padding=0,
                           stride=(bq_h, bq_w))  # (bh, hd * bq, nb): non-overlapping blocks
        # The q-only scaling rides on the identity of the swap (exact: one multiply per element).
        q_blk = self._blocks_first(q_blk, nb_h, nb_w, self.scaling).view(bh * nb, hd, bq)
        k_reg = self._regions(self.pad(k.view(bh, hd, h, w) - pe), nb_h, bq_h, r_h, nb_w, bq_w, r_w)
        k_reg = self._blocks_first(k_reg, nb_h, nb_w).view(bh * nb, hd, r)
        v_reg = self._regions(self.pad(v.view(bh, hd, h, w)), nb_h, bq_h, r_h, nb_w, bq_w, r_w)
        v_reg = self._blocks_first(v_reg, nb_h, nb_w).view(bh * nb, hd, r)
        mask = window_mask(bq_h, r_h, bq_w, r_w, s, d, ka, q.dtype).reshape(-1)
        out, _ = self.block_attention(q_blk, k_reg, v_reg, mask)  # (bh * nb, hd, bq)
        out = self._blocks_last(out.view(bh, nb_w, nb_h, hd * bq), nb_h, nb_w)  # (bh, hd * bq, nb)
        out = ops.fold(out, Tensor([nb_h * bq_h, nb_w * bq_w], ms.int32), kernel_size=(bq_h, bq_w),
                       dilation=1, padding=0, stride=(bq_h, bq_w))  # (bh, hd, h_out+, w_out+)
        out = out.view(b, self.channels, nb_h * bq_h, nb_w * bq_w)
        if nb_h * bq_h != h_out or nb_w * bq_w != w_out:
            out = out[:, :, :h_out, :w_out]
        return out

    # Blocks sit last in unfold's (N, rows, nb_h * nb_w) output and must lead for the batched
    # matmuls. They are swapped by matmuls with identity matrices (see the module docstring): first
    # nb_w, then nb_h, so each costs nb_w or nb_h multiply-adds per element rather than nb_h * nb_w.
    def _blocks_first(self, x, nb_h, nb_w, scale=1.0):
        """(N, rows, nb_h * nb_w) -> (N, nb_w, nb_h, rows), times scale."""
        n, rows = x.shape[0], x.shape[1]
        x = self.swap(x.view(n, rows * nb_h, nb_w), identity_stack(n, nb_w, x.dtype, scale))  # (n, nb_w, rows*nb_h)
        x = self.swap(x.view(n * nb_w, rows, nb_h), identity_stack(n * nb_w, nb_h, x.dtype))  # (n*nb_w, nb_h, rows)
        return x.view(n, nb_w, nb_h, rows)

    def _blocks_last(self, x, nb_h, nb_w):
        """(N, nb_w, nb_h, rows) -> (N, rows, nb_h * nb_w), the inverse of _blocks_first."""
        n, rows = x.shape[0], x.shape[3]
        x = self.swap(x.view(n * nb_w, nb_h, rows), identity_stack(n * nb_w, nb_h, x.dtype))  # (n*nb_w, rows, nb_h)
        x = self.swap(x.view(n, nb_w, rows * nb_h), identity_stack(n, nb_w, x.dtype))  # (n, rows*nb_h, nb_w)
        return x.view(n, rows, nb_h * nb_w)

    def _regions(self, x_pad, nb_h, bq_h, r_h, nb_w, bq_w, r_w):
        """The key rectangle of every query block: (N, C * r_h * r_w, nb_h * nb_w)."""
        hp, wp = x_pad.shape[2], x_pad.shape[3]
        s = self.stride
        x_pad = pad_end(x_pad, s * bq_h * (nb_h - 1) + r_h - hp, s * bq_w * (nb_w - 1) + r_w - wp)
        return ops.unfold(x_pad, kernel_size=(r_h, r_w), dilation=1, padding=0,
                          stride=(s * bq_h, s * bq_w))  # channel-major rows [c][u][v]
