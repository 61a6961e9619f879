"""Zero padding by concatenation with zeros, in portable ops.

The Pad and PadV3 CPU kernels of MindSpore 2.10 are 10-30x slower than Concat for the same result
(measurements in docs/performance-log.md); Concat is exact everywhere, has a plain gradient and,
unlike PadV3, exports a MINDIR that loads with a dynamic batch.
"""
from mindspore import ops


def zero_pad_axis(x, axis, before, after):
    """x with `before` zeros in front of and `after` zeros behind axis `axis` (non-negative ints)."""
    if before <= 0 and after <= 0:
        return x
    axis = axis % x.ndim
    parts = ()
    if before > 0:
        parts += (ops.zeros(x.shape[:axis] + (before,) + x.shape[axis + 1:], x.dtype),)
    parts += (x,)
    if after > 0:
        parts += (ops.zeros(x.shape[:axis] + (after,) + x.shape[axis + 1:], x.dtype),)
    return ops.cat(parts, axis)


def zero_pad_2d(x, top, bottom, left, right):
    """Zero-pad the last two axes of x (..., H, W)."""
    return zero_pad_axis(zero_pad_axis(x, -2, top, bottom), -1, left, right)
