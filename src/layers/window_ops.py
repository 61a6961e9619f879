"""Swin window helpers: cyclic shift, window partition/reverse, relative-position index and the
shifted-window attention mask. Tensor helpers work on NHWC maps with static shapes; the constant
builders return NumPy arrays meant to be turned into Tensors once, in a Cell's __init__."""
import numpy as np
from mindspore import ops


def roll_hw(x, shift_h, shift_w):
    """torch.roll(x, (shift_h, shift_w), dims=(1, 2)) for a (B, H, W, C) map.

    Done by slicing and concatenation: MindSpore has no CPU kernel for Roll, and this form has a
    gradient and exports to MINDIR and ONNX.
    """
    h, w = x.shape[1], x.shape[2]
    shift_h, shift_w = shift_h % h, shift_w % w
    if shift_h:
        x = ops.cat((x[:, h - shift_h:], x[:, :h - shift_h]), 1)
    if shift_w:
        x = ops.cat((x[:, :, w - shift_w:], x[:, :, :w - shift_w]), 2)
    return x


def window_partition(x, window_size):
    """(B, H, W, C) -> (B * nW, window_size * window_size, C), windows in row-major order."""
    b, h, w, c = x.shape
    x = x.view(b, h // window_size, window_size, w // window_size, window_size, c)
    return ops.transpose(x, (0, 1, 3, 2, 4, 5)).reshape(-1, window_size * window_size, c)


def window_reverse(windows, window_size, h, w):
    """(B * nW, window_size * window_size, C) -> (B, H, W, C); inverse of window_partition."""
    c = windows.shape[-1]
    x = windows.view(-1, h // window_size, w // window_size, window_size, window_size, c)
    return ops.transpose(x, (0, 1, 3, 2, 4, 5)).reshape(-1, h, w, c)


def window_reverse_heads(windows, window_size, h, w):
    """(B * nW, heads, ws * ws, head_dim) -> (B, H, W, heads * head_dim): window_reverse of per-head
    windows with the heads merged back into channels, in one Transpose instead of two."""
    _, nh, _, hd = windows.shape
    x = windows.view(-1, h // window_size, w // window_size, nh, window_size, window_size, hd)
    return ops.transpose(x, (0, 1, 4, 2, 5, 3, 6)).reshape(-1, h, w, nh * hd)


def relative_position_index(window_size):
    """(N, N) int32 index into the ((2ws-1)^2, heads) bias table, N = ws^2:
    index = (dh + ws - 1) * (2ws - 1) + (dw + ws - 1) for query i and key j."""
    coords = np.stack(np.meshgrid(np.arange(window_size), np.arange(window_size), indexing='ij'))
    coords = coords.reshape(2, -1)  # (2, N)
    rel = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0) + (window_size - 1)
    return (rel[..., 0] * (2 * window_size - 1) + rel[..., 1]).astype(np.int32)


def shifted_window_mask(h, w, window_size, shift_size):
    """(nW, N, N) float32 mask for shifted-window attention: 0 within a region, -100 across.

    The regions are the 3x3 grid cut at -window_size and -shift_size on each axis, as in Swin;
    tokens from different regions were brought together by the cyclic shift and must not attend
    to each other.
    """
    img = np.zeros((h, w), np.float32)
    cuts = (slice(0, -window_size), slice(-window_size, -shift_size), slice(-shift_size, None))
    region = 0
    for hs in cuts:
        for ws in cuts:
            img[hs, ws] = region
            region += 1
    win = img.reshape(h // window_size, window_size, w // window_size, window_size)
    win = win.transpose(0, 2, 1, 3).reshape(-1, window_size * window_size)  # (nW, N)
    diff = win[:, None, :] - win[:, :, None]
    return np.where(diff != 0, np.float32(-100.0), np.float32(0.0)).astype(np.float32)
