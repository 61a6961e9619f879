"""The hand-written CPU kernels of the CPU formulation: their build (cache, errors, fallback to MindSpore
ops), the Swin ACmix convolution path's values and gradients against the official formulation in
MindSpore ops, LayerNorm and GELU against MindSpore's, and the Dense layer with its matmul bias gradient."""
import ctypes
import math
import shutil
import warnings

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, nn, ops

from src.layers import GELU, ConvolutionPath, WindowAttentionACmix
from src.layers.cpu import kernels as cpu_kernels
from src.layers.cpu import linear as cpu_linear
from src.layers.cpu.activation import KernelGELU
from src.layers.cpu.conv_path import KernelConvolutionPath
from src.layers.cpu.kernels import SOURCE_DIR, build_library, conv_path_op, kernels_enabled
from src.layers.cpu.layer_norm import KernelLayerNorm
from src.layers.formulation import Formulation
from src.layers.window_ops import shifted_window_mask, window_partition

needs_compiler = pytest.mark.skipif(shutil.which('g++') is None, reason='no C++ compiler (g++) on PATH')


class _OfficialConvPath(nn.Cell):
    """The official path in MindSpore ops: fc as a matmul over the 3*nh heads of the token-major
    qkv, then the grouped convolution with its own zero padding, back to token-major."""

    def __init__(self, num_heads, kernel_conv):
        super().__init__()
        self.num_heads, self.kernel_conv = num_heads, kernel_conv

    def construct(self, qkv, fc_w, fc_b, dep_w):
        b, h, w, c3 = qkv.shape
        nh, k = self.num_heads, self.kernel_conv
        hd = c3 // (3 * nh)
        heads = ops.transpose(qkv.reshape(b, h * w, 3 * nh, hd), (0, 3, 2, 1))  # (B, hd, 3nh, HW)
        f = ops.matmul(fc_w, heads) + fc_b.reshape(1, 1, k * k, 1)  # (B, hd, k2, HW)
        out = ops.conv2d(f.reshape(b, hd * k * k, h, w), dep_w, pad_mode='pad', padding=k // 2, groups=hd)
        return ops.transpose(out, (0, 2, 3, 1))


@needs_compiler
@pytest.mark.parametrize('b,h,w,dim,num_heads,k', [
    (2, 8, 12, 16, 2, 3),   # 2 outputs per group, rows of 12 pixels: two tiles of 6
    (2, 7, 7, 24, 3, 3),    # 3 outputs per group (stage 1 of Swin-T), a row ending inside a tile
    (1, 5, 6, 40, 5, 5),    # 5x5, batch 1, one output per tile: 5 heads, no other divisor
    (3, 11, 4, 16, 1, 3),   # one head: one group per head_dim index, tall and narrow
    (2, 6, 17, 64, 4, 3),   # 4 outputs per group, two blocks of 8 groups
    (1, 7, 7, 96, 12, 3),   # 12 outputs per group, four tiles of 3 (stage 3 of Swin-T)
    (2, 4, 5, 24, 3, 1),    # 1x1
    (1, 9, 8, 16, 2, 7),    # 7x7, taller than the map is wide
])
def test_conv_path_kernel_matches_official(b, h, w, dim, num_heads, k):
    kernel = conv_path_op(k, dim // num_heads)
    assert kernel is not None
    rng = np.random.default_rng(0)
    k2 = k * k
    args = [Tensor(rng.normal(size=shape).astype(np.float32)) for shape in
            ((b, h, w, 3 * dim), (k2, 3 * num_heads), (k2,), (dim, k2, k, k))]
    cot = Tensor(rng.normal(size=(b, h, w, dim)).astype(np.float32))

    def run(net):
        def loss(*inputs):
            return (net(*inputs) * cot).sum()
        grads = ms.jit(ms.grad(loss, grad_position=(0, 1, 2, 3)))(*args)
        return [net(*args).asnumpy()] + [g.asnumpy() for g in grads]

    got, want = run(kernel), run(_OfficialConvPath(num_heads, k))
    for name, g, r in zip(['out', 'qkv', 'fc_w', 'fc_b', 'dep_w'], got, want):
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5 * np.abs(r).max(), err_msg=name)


@needs_compiler
@pytest.mark.parametrize('b,h,w,ws,dim,num_heads', [
    (2, 8, 12, 4, 16, 2),   # windows narrower than a register tile of 6 pixels
    (1, 14, 7, 7, 24, 3),   # Swin's 7x7 windows, two windows of a column
])
def test_conv_path_kernel_reads_window_partitioned_maps(b, h, w, ws, dim, num_heads):
    """The kernel on a window-partitioned qkv, (B, H/ws, W/ws, ws*ws, 3C), gives the convolution of
    the whole map, the same values bit for bit, and the partitioned qkv gradient."""
    kernel = conv_path_op(3, dim // num_heads)
    rng = np.random.default_rng(0)
    args = [Tensor(rng.normal(size=shape).astype(np.float32)) for shape in
            ((b, h, w, 3 * dim), (9, 3 * num_heads), (9,), (dim, 9, 3, 3))]
    cot = Tensor(rng.normal(size=(b, h, w, dim)).astype(np.float32))

    def windows(x):  # (B, H, W, C) -> (B, H/ws, W/ws, ws*ws, C)
        return window_partition(x, ws).view(b, h // ws, w // ws, ws * ws, x.shape[-1])

    def run(qkv, cot):
        def loss(*inputs):
            return (kernel(*inputs) * cot).sum()
        grads = ms.jit(ms.grad(loss, grad_position=(0, 1, 2, 3)))(qkv, *args[1:])
        return [kernel(qkv, *args[1:])] + list(grads)

    whole, windowed = run(args[0], cot), run(windows(args[0]), cot)
    assert windowed[0].shape == (b, h, w, dim) and windowed[1].shape == (b, h // ws, w // ws, ws * ws, 3 * dim)
    for name, g, r in zip(['out', 'qkv', 'fc_w', 'fc_b', 'dep_w'], windowed, whole):
        r = windows(r) if name == 'qkv' else r
        np.testing.assert_array_equal(g.asnumpy(), r.asnumpy(), err_msg=name)


@needs_compiler
def test_windowed_layer_under_mixed_precision_runs_the_portable_path_on_the_whole_map():
    layer = WindowAttentionACmix(16, 4, 2, formulation='cpu')
    assert layer.windowed
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 16)).astype(np.float32)
    mask = Tensor(shifted_window_mask(8, 8, 4, 2))
    want = layer(Tensor(x), mask).asnumpy()
    layer.to_float(ms.float16)
    got = layer(Tensor(x.astype(np.float16)), mask.astype(ms.float16))
    assert got.dtype == ms.float16 and got.shape == want.shape
    np.testing.assert_allclose(got.asnumpy().astype(np.float32), want, atol=1e-2 * np.abs(want).max())


@pytest.mark.slow
@needs_compiler
def test_library_is_built_once_per_source(tmp_path):
    sources = tmp_path / 'csrc'
    shutil.copytree(SOURCE_DIR, sources)
    first = build_library(sources, tmp_path / 'cache')
    mtime = first.stat().st_mtime_ns
    assert build_library(sources, tmp_path / 'cache') == first and first.stat().st_mtime_ns == mtime
    header = next(sources.glob('*.h'))  # an edited header rebuilds too
    header.write_text(header.read_text() + '\n// edited\n')
    assert build_library(sources, tmp_path / 'cache') != first


@needs_compiler
def test_compiler_errors_are_reported(tmp_path):
    (tmp_path / 'broken.cc').write_text('int f( {\n')
    with pytest.raises(RuntimeError, match='failed to compile'):
        build_library(tmp_path, tmp_path)
    assert not list(tmp_path.glob('*.so'))  # no half-written library left behind


@needs_compiler
def test_conv_path_kernel_refuses_operands_that_do_not_fit_together():
    # called as MindSpore calls an aot kernel; a refused call returns 1 before reading any data
    entry = ctypes.CDLL(str(build_library())).FcConvForward
    b, h, w, c, nh, k = 2, 7, 7, 16, 2, 3
    arrays = [np.zeros(shape, np.float32) for shape in [(b, h, w, 3 * c), (k * k, 3 * nh), (k * k,),
                                                       (c, k * k, k, k), (b, h, w, c)]]

    def call(shapes):
        params = (ctypes.c_void_p * 5)(*[a.ctypes.data for a in arrays])
        dims = [(ctypes.c_int64 * len(shape))(*shape) for shape in shapes]
        ndims = (ctypes.c_int * 5)(*map(len, shapes))
        return entry(5, params, ndims, (ctypes.POINTER(ctypes.c_int64) * 5)(*dims), None, None, None)

    good = [a.shape for a in arrays]
    assert call(good) == 0
    for i, shape in [(0, (b, h, w, 3 * c + 8)),   # qkv not 3C wide
                     (1, (k * k, 3 * nh + 3)),     # fc over other heads
                     (2, (k * k + 1,)),            # fc bias
                     (3, (c, k * k, k, k - 2)),    # a kernel that is not square
                     (4, (b, h, w + 1, c)),        # output of another map
                     (4, (b, h * w, c))]:          # output of another rank
        assert call(good[:i] + [shape] + good[i + 1:]) == 1, (i, shape)


def _uses_kernel(cell):
    return isinstance(cell.conv_path, KernelConvolutionPath)


def test_an_unwritable_kernel_cache_falls_back_with_a_warning(monkeypatch, tmp_path):
    (tmp_path / 'a_file').write_text('')
    monkeypatch.setenv('ACMIX_KERNEL_CACHE', str(tmp_path / 'a_file' / 'cache'))
    monkeypatch.setattr(cpu_kernels, '_state', {'enabled': True, 'library': None, 'error': None})
    with pytest.warns(UserWarning, match='CPU kernels unavailable'):
        assert not _uses_kernel(WindowAttentionACmix(16, 4, 2, formulation='cpu'))


@needs_compiler
def test_the_environment_switch_is_read_when_a_layer_is_built(monkeypatch):
    monkeypatch.setenv('ACMIX_CPU_KERNELS', '0')
    assert not _uses_kernel(WindowAttentionACmix(16, 4, 2, formulation='cpu'))
    monkeypatch.setenv('ACMIX_CPU_KERNELS', '1')
    assert _uses_kernel(WindowAttentionACmix(16, 4, 2, formulation='cpu'))


def test_without_a_compiler_the_layer_falls_back_with_a_warning(monkeypatch, tmp_path):
    monkeypatch.setenv('CXX', str(tmp_path / 'no-such-compiler'))
    monkeypatch.setenv('ACMIX_KERNEL_CACHE', str(tmp_path))
    monkeypatch.setattr(cpu_kernels, '_state', {'enabled': True, 'library': None, 'error': None})
    with pytest.warns(UserWarning, match='CPU kernels unavailable'):
        cell = WindowAttentionACmix(16, 4, 2, formulation='cpu')
    assert isinstance(cell.conv_path, ConvolutionPath)
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # said once per process, not once per layer
        assert not _uses_kernel(WindowAttentionACmix(16, 4, 2, formulation='cpu'))


@needs_compiler
def test_kernels_can_be_switched_off_for_a_block():
    with kernels_enabled(False):
        assert not _uses_kernel(WindowAttentionACmix(16, 4, 2, formulation='cpu'))
        with kernels_enabled(True):
            assert _uses_kernel(WindowAttentionACmix(16, 4, 2, formulation='cpu'))
        assert conv_path_op(3, 8) is None
    assert _uses_kernel(WindowAttentionACmix(16, 4, 2, formulation='cpu'))


@needs_compiler
def test_kernel_only_in_the_cpu_formulation_up_to_its_size_limit_and_for_blocks_of_8_groups():
    assert _uses_kernel(WindowAttentionACmix(16, 4, 2, kernel_conv=cpu_kernels.MAX_KERNEL_SIZE, formulation='cpu'))
    assert not _uses_kernel(WindowAttentionACmix(16, 4, 2, kernel_conv=cpu_kernels.MAX_KERNEL_SIZE + 2,
                                                 formulation='cpu'))
    assert not _uses_kernel(WindowAttentionACmix(16, 4, 2, formulation='portable'))
    # a head_dim that is not a multiple of 8 (the kernel's vector of groups): the portable path
    cell = WindowAttentionACmix(24, 4, 2, formulation='cpu')
    assert not _uses_kernel(cell) and not cell.windowed and conv_path_op(3, 12) is None


def _values_and_grads(net, x, cot):
    """net(x), and the gradients of sum(net(x) * cot) for x and then net's trainable parameters."""
    def loss(x):
        return (net(x) * cot).sum()
    _, (dx, dparams) = ms.jit(ms.value_and_grad(loss, grad_position=0, weights=net.trainable_params()))(x)
    return [net(x).asnumpy(), dx.asnumpy()] + [g.asnumpy() for g in dparams]


@needs_compiler
@pytest.mark.parametrize('shape', [
    (2, 50, 96),  # Swin's widths are multiples of 8; 100 rows, not a multiple of the 64-row block
    (3, 7, 13),   # a width with a tail after the 8-wide registers
    (130, 20),    # two dimensions, three blocks
    (1, 1, 8),
])
def test_layer_norm_kernel_matches_layer_norm(shape):
    rng = np.random.default_rng(0)
    c = shape[-1]
    ours = Formulation('cpu').layer_norm(c)
    assert isinstance(ours, KernelLayerNorm)
    ref = nn.LayerNorm((c,), epsilon=1e-5)
    for name in ('gamma', 'beta'):
        value = Tensor(rng.normal(size=c).astype(np.float32))
        getattr(ours, name).set_data(value)
        getattr(ref, name).set_data(value)
    x = Tensor((rng.normal(size=shape) * 3 + 1).astype(np.float32))  # rows with a mean far from 0
    cot = Tensor(rng.normal(size=shape).astype(np.float32))
    for name, got, want in zip(('y', 'dx', 'dgamma', 'dbeta'), _values_and_grads(ours, x, cot),
                               _values_and_grads(ref, x, cot)):
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-6 * np.abs(want).max(), err_msg=name)


@needs_compiler
def test_gelu_kernel_matches_gelu_and_the_exact_function():
    rng = np.random.default_rng(0)
    x = np.concatenate([np.linspace(-14, 14, 4001), rng.normal(size=3003) * 3]).astype(np.float32)
    cot = Tensor(rng.normal(size=x.shape).astype(np.float32))
    ours = Formulation('cpu').gelu()
    assert isinstance(ours, KernelGELU)
    (y, dx), (y_ref, dx_ref) = (_values_and_grads(net, Tensor(x), cot) for net in (ours, GELU()))
    np.testing.assert_allclose(y, y_ref, rtol=0, atol=1e-6)
    np.testing.assert_allclose(dx, dx_ref, rtol=0, atol=2e-6 * np.abs(cot.asnumpy()).max())
    # against x * Phi(x) in float64: also for negative x, where 1 + erf(x / sqrt(2)) cancels in float32
    phi = 0.5 * np.vectorize(math.erfc)(-x.astype(np.float64) / math.sqrt(2))
    exact = x * phi
    scale = np.maximum(np.abs(exact), 1e-30)
    assert (np.abs(y - exact) / scale)[np.abs(exact) > 1e-30].max() < 1e-4
    assert np.abs(y - exact).max() < 5e-7


@needs_compiler
def test_layer_norm_and_gelu_kernels_run_ms_ops_under_mixed_precision():
    x = np.random.default_rng(0).normal(size=(2, 5, 16)).astype(np.float16)
    pairs = [(Formulation('cpu').layer_norm(16), nn.LayerNorm((16,), epsilon=1e-5)),
             (Formulation('cpu').gelu(), GELU())]
    for ours, ref in pairs:
        got, want = ours(Tensor(x)), ref(Tensor(x))
        assert got.dtype == ms.float16
        np.testing.assert_array_equal(got.asnumpy(), want.asnumpy())


@needs_compiler
def test_kernel_layers_run_ms_ops_in_cells_mixed_precision_set_to_half_when_called_eagerly():
    """Called eagerly (PyNative), auto_mixed_precision casts the inputs of each op, not the Cell's: the
    kernel layers see a float32 input there and must still not give their float32 kernels float16
    data. They run the ops of their fallbacks, as the reference layers do."""
    from mindspore.amp import auto_mixed_precision
    rng = np.random.default_rng(0)
    x = Tensor(rng.normal(size=(2, 4, 4, 16)).astype(np.float32))
    conv_inputs = [Tensor(rng.normal(size=shape).astype(np.float32)) for shape in
                   ((2, 4, 4, 48), (9, 6), (9,), (16, 9, 3, 3))]
    cpu, portable = Formulation('cpu'), Formulation('portable')
    pairs = [(cpu.gelu(), GELU(), (x,)), (cpu.layer_norm(16), nn.LayerNorm((16,), epsilon=1e-5), (x,)),
             (cpu.convolution_path(2, 8, 16, 3, channels_last=True),
              portable.convolution_path(2, 8, 16, 3, channels_last=True), conv_inputs)]
    assert isinstance(pairs[2][0], KernelConvolutionPath)
    ms.set_context(mode=ms.PYNATIVE_MODE)
    try:
        for ours, ref, inputs in pairs:
            got = auto_mixed_precision(ours, 'O3')(*inputs)
            want = auto_mixed_precision(ref, 'O3')(*inputs)
            np.testing.assert_array_equal(got.asnumpy(), want.asnumpy(), err_msg=type(ours).__name__)
    finally:
        ms.set_context(mode=ms.GRAPH_MODE)


@pytest.mark.parametrize('shape,has_bias', [((4, 9, 24), True), ((5, 24), True), ((3, 24), False)])
def test_cpu_dense_is_nn_dense_with_a_matmul_bias_gradient(shape, has_bias):
    rng = np.random.default_rng(0)
    ours = Formulation('cpu').dense(24, 40, has_bias=has_bias)
    assert isinstance(ours, cpu_linear.Dense)
    ref = nn.Dense(24, 40, has_bias=has_bias)
    for p, q in zip(ours.trainable_params(), ref.trainable_params()):
        p.set_data(q.data)
    x = Tensor(rng.normal(size=shape).astype(np.float32))
    cot = Tensor(rng.normal(size=shape[:-1] + (40,)).astype(np.float32))
    got, want = _values_and_grads(ours, x, cot), _values_and_grads(ref, x, cot)
    for name, g, w in zip(('y', 'dx', 'dweight'), got, want):  # the same ops as nn.Dense and autodiff
        np.testing.assert_array_equal(g, w, err_msg=name)
    if has_bias:  # another summation order
        np.testing.assert_allclose(got[3], want[3], rtol=1e-6, atol=1e-6)


def test_cpu_dense_bias_gradient_under_mixed_precision():
    rng = np.random.default_rng(0)
    ours, ref = Formulation('cpu').dense(8, 4), nn.Dense(8, 4)
    for p, q in zip(ours.trainable_params(), ref.trainable_params()):
        p.set_data(q.data)
    x = Tensor(rng.normal(size=(3000, 8)).astype(np.float16))
    cot = Tensor(rng.normal(size=(3000, 4)).astype(np.float16))
    got = _values_and_grads(ours.to_float(ms.float16), x, cot)
    want = _values_and_grads(ref, x.astype(ms.float32), cot.astype(ms.float32))
    assert got[0].dtype == np.float16
    np.testing.assert_allclose(got[3], want[3], rtol=2e-3, atol=1e-2)  # summed in float32


@needs_compiler
def test_formulation_picks_the_kernel_layers_only_on_cpu_and_when_enabled():
    assert isinstance(Formulation('cpu').layer_norm(8), KernelLayerNorm)
    assert isinstance(Formulation('cpu').gelu(), KernelGELU)
    for make in (lambda: Formulation('portable').layer_norm(8), lambda: Formulation('portable').gelu()):
        assert not isinstance(make(), (KernelLayerNorm, KernelGELU))
    assert type(Formulation('portable').dense(8, 4)) is nn.Dense
    with kernels_enabled(False):
        assert type(Formulation('cpu').layer_norm(8)) is nn.LayerNorm
        assert type(Formulation('cpu').gelu()) is GELU
