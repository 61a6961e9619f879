"""Swin pieces against NumPy: cyclic shift, window partition/reverse, mask, relative index;
the ACmix window attention against a NumPy forward of the official equations, and its gradients
against autodiff of the official formulation, in both formulations (the convolution path as the
CPU kernel, and in portable ops)."""
import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, nn, ops

from src.layers import (
    WindowAttention,
    WindowAttentionACmix,
    relative_position_index,
    roll_hw,
    shifted_window_mask,
    window_partition,
    window_reverse,
)
from src.layers.cpu.conv_path import KernelConvolutionPath
from src.layers.cpu.kernels import conv_path_op


def _check_formulation(cell, formulation):
    """In the CPU formulation the convolution path is the C++ kernel wherever it can be built."""
    if cell.use_conv:
        kernel_expected = formulation == 'cpu' and conv_path_op(cell.kernel_conv, cell.head_dim) is not None
        assert isinstance(cell.conv_path, KernelConvolutionPath) == kernel_expected


class _Fn(nn.Cell):
    """Runs a tensor helper inside a graph, as models do."""

    def __init__(self, fn, *args):
        super().__init__()
        self.fn, self.args = fn, args

    def construct(self, x):
        return self.fn(x, *self.args)


@pytest.mark.parametrize('sh,sw', [(-3, -3), (3, 3), (2, -5), (0, 4), (9, 0)])
def test_roll_matches_numpy(sh, sw):
    x = np.random.randn(2, 7, 9, 3).astype(np.float32)
    got = _Fn(roll_hw, sh, sw)(Tensor(x)).asnumpy()
    np.testing.assert_array_equal(got, np.roll(x, (sh, sw), axis=(1, 2)))


def test_window_partition_and_reverse():
    x = np.random.randn(2, 8, 12, 3).astype(np.float32)
    win = _Fn(window_partition, 4)(Tensor(x)).asnumpy()
    assert win.shape == (2 * 2 * 3, 16, 3)
    # window (b=1, row 1, col 2) holds x[1, 4:8, 8:12] in row-major order
    np.testing.assert_array_equal(win[1 * 6 + 1 * 3 + 2], x[1, 4:8, 8:12].reshape(16, 3))
    back = _Fn(window_reverse, 4, 8, 12)(Tensor(win)).asnumpy()
    np.testing.assert_array_equal(back, x)


def test_relative_position_index():
    ws = 3
    idx = relative_position_index(ws)
    assert idx.shape == (9, 9) and idx.dtype == np.int32
    for i in range(9):
        for j in range(9):
            dh, dw = i // ws - j // ws, i % ws - j % ws
            assert idx[i, j] == (dh + ws - 1) * (2 * ws - 1) + (dw + ws - 1)
    assert idx.min() == 0 and idx.max() == (2 * ws - 1) ** 2 - 1


def test_shifted_window_mask():
    h, w, ws, shift = 8, 8, 4, 2
    mask = shifted_window_mask(h, w, ws, shift)
    assert mask.shape == (4, 16, 16) and set(np.unique(mask)) <= {0.0, -100.0}
    # Region labels of the shifted map, computed directly.
    def region(r, size):
        return 0 if r < size - ws else (1 if r < size - shift else 2)
    labels = np.array([[region(r, h) * 3 + region(c, w) for c in range(w)] for r in range(h)])
    for win in range(4):
        r0, c0 = (win // 2) * ws, (win % 2) * ws
        lab = labels[r0:r0 + ws, c0:c0 + ws].reshape(-1)
        want = np.where(lab[:, None] == lab[None, :], 0.0, -100.0)
        np.testing.assert_array_equal(mask[win], want)
    assert (mask[0] == 0).all()  # the top-left window holds one region only


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def reference_window_acmix(cell, x, mask):
    """NumPy forward of the official WindowAttention_acmix on a shifted (B, H, W, C) map."""
    p = {q.name: q.asnumpy().astype(np.float64) for q in cell.get_parameters()}
    b, h, w, c = x.shape
    ws, nh = cell.window_size, cell.num_heads
    hd, n = c // nh, ws * ws
    qkv = x @ p['qkv.weight'].T + p['qkv.bias']  # (B, H, W, 3C)
    out = 0.0
    use_att, use_conv = getattr(cell, 'use_att', True), getattr(cell, 'use_conv', False)  # plain: attention only
    if use_att:
        win = qkv.reshape(b, h // ws, ws, w // ws, ws, 3 * c).transpose(0, 1, 3, 2, 4, 5).reshape(-1, n, 3 * c)
        win = win.reshape(-1, n, 3, nh, hd).transpose(2, 0, 3, 1, 4)
        q, k, v = win[0] * hd ** -0.5, win[1], win[2]
        att = q @ k.swapaxes(-1, -2)
        bias = p['relative_position_bias_table'][relative_position_index(ws).reshape(-1)].reshape(n, n, nh)
        att = att + bias.transpose(2, 0, 1)[None]
        if mask is not None:
            nw = mask.shape[0]
            att = (att.reshape(-1, nw, nh, n, n) + mask[None, :, None]).reshape(-1, nh, n, n)
        y = (_softmax(att) @ v).transpose(0, 2, 1, 3).reshape(-1, n, c) @ p['proj.weight'].T + p['proj.bias']
        y = y.reshape(b, h // ws, w // ws, ws, ws, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)
        out = y
    if use_conv:
        f = qkv.reshape(b, h * w, 3 * nh, hd).transpose(0, 2, 1, 3)  # (B, 3nh, HW, hd)
        f = np.einsum('jc,bcpd->bjpd', p['fc.weight'][:, :, 0, 0], f) + p['fc.bias'][None, :, None, None]
        f = f.transpose(0, 3, 1, 2).reshape(b, hd * 9, h, w)
        fp = np.pad(f, [(0, 0), (0, 0), (1, 1), (1, 1)])
        wt = p['dep_conv.weight']
        conv = np.zeros((b, c, h, w))
        for o in range(c):
            g = o // (c // hd)
            for a in range(3):
                for e in range(3):
                    conv[:, o] += np.einsum('i,bihw->bhw', wt[o, :, a, e], fp[:, g * 9:(g + 1) * 9, a:a + h, e:e + w])
        conv = conv.transpose(0, 2, 3, 1)
        out = p['rate1'][0] * out + p['rate2'][0] * conv if use_att else conv
    return out


@pytest.mark.parametrize('paths,shifted', [('both', True), ('both', False), ('conv', False), ('attention', True)])
def test_window_acmix_matches_numpy(paths, shifted, formulation):
    rng = np.random.default_rng(0)
    cell = WindowAttentionACmix(16, 4, 2, paths=paths, formulation=formulation)
    _check_formulation(cell, formulation)
    for prm in cell.get_parameters():
        prm.set_data(Tensor(rng.normal(0, 0.5, prm.shape).astype(np.float32)))
    cell.set_train(False)
    x = rng.normal(size=(2, 8, 8, 16)).astype(np.float32)
    mask = shifted_window_mask(8, 8, 4, 2) if shifted else None
    got = cell(Tensor(x), None if mask is None else Tensor(mask)).asnumpy()
    want = reference_window_acmix(cell, x.astype(np.float64), mask)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def _official_window_attention(cell, x, mask):
    """The official WindowAttention in MindSpore ops: qkv on the map, the 3C-wide qkv partitioned,
    ops.matmul with an explicit swap of k, the bias and mask added by broadcasting."""
    qkv = cell.qkv(x)
    b, h, w, _ = qkv.shape
    ws, nh, hd, c = cell.window_size, cell.num_heads, cell.head_dim, cell.dim
    n = ws * ws
    win = ops.transpose(window_partition(qkv, ws).reshape(-1, n, 3, nh, hd), (2, 0, 3, 1, 4))
    attn = ops.matmul(win[0] * cell.scale, win[1].swapaxes(-2, -1))  # (B*nW, nh, N, N)
    bias = cell.relative_position_bias_table[cell.relative_position_index].view(n, n, nh)
    attn = attn + ops.transpose(bias, (2, 0, 1)).expand_dims(0)
    if mask is not None:
        nw = mask.shape[0]
        attn = (attn.view(-1, nw, nh, n, n) + mask.view(1, nw, 1, n, n)).view(-1, nh, n, n)
    out = ops.matmul(ops.softmax(attn, axis=-1), win[2]).swapaxes(1, 2).reshape(-1, n, c)
    return window_reverse(cell.proj(out), ws, h, w)


@pytest.mark.parametrize('shifted', [True, False])
def test_plain_window_attention_matches_numpy_and_the_official_gradients(shifted):
    """The plain attention partitions the C-wide input and transposes k by the matmul's flag: the
    NumPy forward of the official equations, and the gradients of its formulation in ops, up to
    fp32 rounding (the same products, summed in another order in the backward matmuls)."""
    rng = np.random.default_rng(1)
    cell = WindowAttention(8, 4, 2)
    for prm in cell.get_parameters():
        prm.set_data(Tensor(rng.normal(0, 0.5, prm.shape).astype(np.float32)))
    cell.set_train(False)
    x = rng.normal(size=(2, 8, 12, 8)).astype(np.float32)
    mask = shifted_window_mask(8, 12, 4, 2) if shifted else None
    mask_t = None if mask is None else Tensor(mask)
    got = cell(Tensor(x), mask_t).asnumpy()
    np.testing.assert_allclose(got, reference_window_acmix(cell, x.astype(np.float64), mask), rtol=1e-4, atol=1e-4)

    cot = Tensor(rng.normal(size=got.shape).astype(np.float32))
    params = cell.trainable_params()

    def grads(forward):
        def loss(inp):
            return (forward(inp) * cot).sum()
        dx, dparams = ms.jit(ms.grad(loss, grad_position=0, weights=params))(Tensor(x))
        return [dx.asnumpy()] + [g.asnumpy() for g in dparams]

    def ours(inp):
        return cell(inp, mask_t)

    def official(inp):
        return _official_window_attention(cell, inp, mask_t)

    for name, g, r in zip(['x'] + [p.name for p in params], grads(ours), grads(official)):
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-6 * np.abs(r).max(), err_msg=name)


def test_plain_window_attention_has_no_conv_path():
    names = {p.name for p in WindowAttention(8, 4, 2).get_parameters()}
    assert names == {'qkv.weight', 'qkv.bias', 'proj.weight', 'proj.bias', 'relative_position_bias_table'}


def _official_window_acmix(cell, x, mask):
    """The official WindowAttention_acmix in MindSpore ops, differentiated by autodiff: fc as a
    1x1 conv over (B, 3nh, HW, hd), then the grouped conv with its own zero padding."""
    qkv = cell.qkv(x)
    b, h, w, _ = qkv.shape
    nh, hd, k = cell.num_heads, cell.head_dim, cell.kernel_conv
    f = ops.transpose(qkv.reshape(b, h * w, 3 * nh, hd), (0, 2, 1, 3))
    f = ops.conv2d(f, cell.fc.weight) + cell.fc.bias.reshape(1, -1, 1, 1)  # (B, k2, HW, hd)
    f = ops.transpose(f, (0, 3, 1, 2)).reshape(b, hd * k * k, h, w)
    conv = ops.conv2d(f, cell.dep_conv.weight, pad_mode='pad', padding=k // 2, groups=hd)
    conv = ops.transpose(conv, (0, 2, 3, 1))
    return cell.rate1 * cell._window_attention(qkv, mask) + cell.rate2 * conv


@pytest.mark.parametrize('dim,num_heads,kernel_conv,shifted,qkv_bias', [
    (16, 2, 3, True, True), (32, 4, 5, False, True), (16, 2, 3, False, False),
    (96, 12, 3, True, True),  # more outputs than inputs per convolution group
])
def test_window_acmix_gradients_match_autodiff(dim, num_heads, kernel_conv, shifted, qkv_bias, formulation):
    """The layer (convolution path as the CPU kernel or in portable ops) against autodiff of the
    official formulation (fc as a 1x1 conv, a grouped Conv2D), on a map that is not square, with
    5x5 too."""
    rng = np.random.default_rng(0)
    cell = WindowAttentionACmix(dim, 4, num_heads, qkv_bias=qkv_bias, kernel_conv=kernel_conv,
                                formulation=formulation)
    _check_formulation(cell, formulation)
    for prm in cell.get_parameters():
        prm.set_data(Tensor(rng.normal(0, 0.5, prm.shape).astype(np.float32)))
    x = Tensor(rng.normal(size=(2, 8, 12, dim)).astype(np.float32))
    mask = Tensor(shifted_window_mask(8, 12, 4, 2)) if shifted else None
    cot = Tensor(rng.normal(size=(2, 8, 12, dim)).astype(np.float32))
    params = cell.trainable_params()

    def grads(forward):
        def loss(inp):
            return (forward(inp) * cot).sum()
        dx, dparams = ms.jit(ms.grad(loss, grad_position=0, weights=params))(x)
        return [dx.asnumpy()] + [g.asnumpy() for g in dparams]

    def ours(inp):
        return cell(inp, mask)

    def official(inp):
        return _official_window_acmix(cell, inp, mask)

    got, want = grads(ours), grads(official)
    for name, g, r in zip(['x'] + [p.name for p in params], got, want):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-4 * np.abs(r).max(), err_msg=name)
