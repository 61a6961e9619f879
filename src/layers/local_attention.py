"""The local-window self-attention of the ResNet ACmix layer, blocked, in portable ops.

Every query attends to the k x k window around it (reflection-padded keys and values). Instead of
gathering the k*k neighbours of every query (the official `nn.Unfold`, which materialises k*k copies
of k and v), the output grid is cut into blocks of about 7 x 7 queries; all queries of a block attend,
by one batched matmul, to the rectangle of keys that covers their windows, and a constant mask removes
the keys outside each query's own window. The softmax is then the official one: masked keys get a
weight of exactly 0. Keys and values are read about 3.5 times instead of k*k = 49 times.

`block_geometry` and `window_mask` are shared with the CPU-tuned formulation
(`cpu/local_attention.py`), which runs the same blocks with CPU-specific kernels.
"""
import numpy as np
from mindspore import Tensor, nn, ops
from mindspore.ops import constexpr

from .padding import zero_pad_2d, zero_pad_axis
from .precision import cast_to, float32_if_half

# The additive mask outside a query's window. Finite, so that no graph holds an infinity (on Ascend in
# saturation mode an inf produced or consumed anywhere sets the overflow flag that loss scaling reads),
# and large enough that its exponential underflows to exactly 0 after the softmax's max subtraction,
# in float32 (below -104) and in float16 (below -17), for any logit spread under 9,000.
MASK_NEGATIVE = -1.0e4


@constexpr
def block_geometry(n_out, stride, dilation, kernel):
    """(queries per block, blocks, keys per block) along an axis with n_out attention outputs."""
    # ~7 queries a side balances the wasted logits ((bq + 6) / 7 per axis) against the overlap
    # of the key rectangles ((bq + 6) / bq per axis); a size that divides n_out avoids padding.
    sizes = range(min(4, n_out), min(8, n_out) + 1)
    bq = min(sizes, key=lambda z: (-(-n_out // z) * z, abs(z - 7.5)))
    return bq, -(-n_out // bq), stride * (bq - 1) + dilation * (kernel - 1) + 1


@constexpr
def window_mask(bq_h, r_h, bq_w, r_w, stride, dilation, kernel, dtype):
    """(bq_h * bq_w, r_h * r_w), rows [a][c], columns [u][v]: 0 where key (u, v) of a block's key
    rectangle lies in the window of query (a, c) of the block, MASK_NEGATIVE elsewhere."""
    def axis_inside(bq, r):
        off = np.arange(r)[None, :] - stride * np.arange(bq)[:, None]  # (bq, r)
        return (off >= 0) & (off % dilation == 0) & (off // dilation < kernel)
    inside = axis_inside(bq_h, r_h)[:, None, :, None] & axis_inside(bq_w, r_w)[None, :, None, :]
    mask = np.where(inside, 0.0, MASK_NEGATIVE).reshape(bq_h * bq_w, r_h * r_w)
    return Tensor(mask, dtype)


def pad_end(x, ph, pw):
    """Zero-pad the bottom and right of (N, C, H, W) by ph and pw (nothing for values <= 0)."""
    return zero_pad_2d(x, 0, max(ph, 0), 0, max(pw, 0))


def _overlapping_rows(x, count, step, size):
    """(N, C, H, W) -> (N, C, count, size, W): rows [i * step, i * step + size) for i < count.

    The windows overlap when size > step, so they are not one reshape; they are the first `size`
    rows of ceil(size / step) reshaped copies, piece p holding rows [(i + p) * step, (i + p + 1) *
    step). Only contiguous slices, Pad, Reshape and Concat: exact, with plain gradients everywhere.
    """
    n_pieces = -(-size // step)
    x = pad_end(x, (count + n_pieces - 1) * step - x.shape[2], 0)
    n, c, w = x.shape[0], x.shape[1], x.shape[3]
    pieces = ()
    for p in range(n_pieces):
        # Slice, not StridedSlice (tensor[...]): on CPU the latter is 10-20x slower
        piece = ops.slice(x, (0, 0, p * step, 0), (n, c, count * step, w))
        pieces += (piece.reshape(-1, c, count, step, w),)
    rows = ops.cat(pieces, 3)
    return ops.slice(rows, (0, 0, 0, 0, 0), (n, c, count, size, w))


def _overlapping_columns(x, count, step, size):
    """(N, C, A, B, W) -> (N, C, A, B, count, size): columns [i * step, i * step + size)."""
    n_pieces = -(-size // step)
    x = zero_pad_axis(x, 4, 0, (count + n_pieces - 1) * step - x.shape[4])
    lead = x.shape[:4]
    pieces = ()
    for p in range(n_pieces):
        piece = ops.slice(x, (0, 0, 0, 0, p * step), lead + (count * step,))
        pieces += (piece.reshape((-1,) + lead[1:] + (count, step)),)
    columns = ops.cat(pieces, 5)
    return ops.slice(columns, (0,) * 6, lead + (count, size))


class LocalAttention(nn.Cell):
    """Blocked k x k local-window attention, portable formulation: ops that the MindSpore API pages
    list for Ascend, GPU and CPU, no infinities, gradients by autodiff.

    construct(q, k, v, pe): q, k, v (B, heads * head_dim, H, W), pe (1, head_dim, H, W), the
    positional encoding shared by every head. Returns (B, heads * head_dim, ceil(H/s), ceil(W/s)).
    The logit of query p and window key j is scaling * q_p . (k_j + pe_p - pe_j), as in the official
    code; the q_p . pe_p term is the same for every j, so it cancels in the softmax and is left out,
    and reflection padding is linear, so pad(k) - pad(pe) == pad(k - pe).
    """

    def __init__(self, head, head_dim, kernel_size, stride, dilation, scaling):
        super().__init__()
        self.head_dim = head_dim
        self.channels = head * head_dim
        self.kernel_size, self.stride, self.dilation = kernel_size, stride, dilation
        self.scaling = scaling
        self.pad = nn.ReflectionPad2d((dilation * (kernel_size - 1) + 1) // 2)
        self.bmm_tn = ops.BatchMatMul(transpose_a=True)
        self.bmm_nt = ops.BatchMatMul(transpose_b=True)
        self.softmax = ops.Softmax(-1)

    def _key_rectangles(self, x, nb_h, bq_h, r_h, nb_w, bq_w, r_w):
        """(N, hd, Hp, Wp) padded map -> (N * nb, hd, r_h * r_w), the key rectangle of every block."""
        s, hd = self.stride, self.head_dim
        x = _overlapping_columns(_overlapping_rows(x, nb_h, s * bq_h, r_h), nb_w, s * bq_w, r_w)
        # (N, hd, nb_h, r_h, nb_w, r_w) -> (N, nb_h, nb_w, hd, r_h, r_w)
        return ops.transpose(x, (0, 2, 4, 1, 3, 5)).reshape(-1, hd, r_h * r_w)

    def construct(self, q, k, v, pe):
        h, w = q.shape[2], q.shape[3]
        hd, s, d = self.head_dim, self.stride, self.dilation
        h_out, w_out = (h - 1) // s + 1, (w - 1) // s + 1
        (bq_h, nb_h, r_h), (bq_w, nb_w, r_w) = (block_geometry(h_out, s, d, self.kernel_size),
                                                block_geometry(w_out, s, d, self.kernel_size))
        # Head-major split, as the official view(b * head, head_dim, h, w): channel c is head c // hd.
        q = q.reshape(-1, hd, h, w) * self.scaling
        if s > 1:
            q = q[:, :, ::s, ::s]
        # Queries past the output edge (where the block size does not divide it) are zeros, cropped
        # at the end; keys past the padded map are zeros that no real query's window reaches.
        q = pad_end(q, nb_h * bq_h - h_out, nb_w * bq_w - w_out)
        # (N, hd, nb_h, bq_h, nb_w, bq_w) -> (N, nb_h, nb_w, hd, bq_h, bq_w) -> (N * nb, hd, bq)
        q = ops.transpose(q.reshape(-1, hd, nb_h, bq_h, nb_w, bq_w), (0, 2, 4, 1, 3, 5)).reshape(-1, hd, bq_h * bq_w)
        k = self._key_rectangles(self.pad(k.reshape(-1, hd, h, w) - pe), nb_h, bq_h, r_h, nb_w, bq_w, r_w)
        v = self._key_rectangles(self.pad(v.reshape(-1, hd, h, w)), nb_h, bq_h, r_h, nb_w, bq_w, r_w)
        # Under mixed precision the logits, the mask and the softmax are float32, as apex O1 keeps the
        # official layer's logit sum and softmax; the matmuls stay float16.
        logits = float32_if_half(self.bmm_tn(q, k))
        mask = window_mask(bq_h, r_h, bq_w, r_w, s, d, self.kernel_size, logits.dtype)
        att = self.softmax(logits + mask)  # (N * nb, bq, r)
        out = self.bmm_nt(v, cast_to(att, v.dtype))  # (N * nb, hd, bq)
        # (N, nb_h, nb_w, hd, bq_h, bq_w) -> (N, hd, nb_h, bq_h, nb_w, bq_w) -> (B, C, h_out+, w_out+)
        out = ops.transpose(out.reshape(-1, nb_h, nb_w, hd, bq_h, bq_w), (0, 3, 1, 4, 2, 5))
        out = out.reshape(-1, self.channels, nb_h * bq_h, nb_w * bq_w)
        if nb_h * bq_h != h_out or nb_w * bq_w != w_out:
            out = ops.slice(out, (0, 0, 0, 0), (out.shape[0], self.channels, h_out, w_out))
        return out
