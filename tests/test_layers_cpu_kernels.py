"""The hand-written CPU kernel of the Swin ACmix convolution path (CPU formulation): its build (cache,
errors, fallback to the portable path) and its values and gradients against the official formulation
in MindSpore ops."""
import shutil
import warnings

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, nn, ops

from src.layers import ConvolutionPath, WindowAttentionACmix
from src.layers.cpu import kernels as cpu_kernels
from src.layers.cpu.conv_path import KernelConvolutionPath, _FusedKernel
from src.layers.cpu.kernels import SOURCE, build_library, conv_path_ops, kernels_enabled

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
    (2, 8, 12, 24, 2, 3),   # 2 outputs per group, a row shorter than a register block
    (2, 7, 7, 36, 3, 3),    # 3 outputs per group (stage 1 of Swin-T)
    (1, 5, 6, 20, 5, 5),    # 5x5, batch 1, one output channel at a time
    (3, 11, 4, 16, 1, 3),   # one head: one group per head_dim index, tall and narrow
    (2, 6, 17, 48, 4, 3),   # 4 outputs per group, a row longer than a register block
])
def test_conv_path_kernel_matches_official(b, h, w, dim, num_heads, k):
    kernels = conv_path_ops(k)
    assert kernels is not None
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

    got, want = run(_FusedKernel(*kernels)), run(_OfficialConvPath(num_heads, k))
    for name, g, r in zip(['out', 'qkv', 'fc_w', 'fc_b', 'dep_w'], got, want):
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5 * np.abs(r).max(), err_msg=name)


@needs_compiler
def test_library_is_built_once_per_source(tmp_path):
    source = tmp_path / 'k.cc'
    shutil.copy(SOURCE, source)
    first = build_library(source, tmp_path / 'cache')
    mtime = first.stat().st_mtime_ns
    assert build_library(source, tmp_path / 'cache') == first and first.stat().st_mtime_ns == mtime
    source.write_text(source.read_text() + '\n// edited\n')
    assert build_library(source, tmp_path / 'cache') != first


@needs_compiler
def test_compiler_errors_are_reported(tmp_path):
    source = tmp_path / 'broken.cc'
    source.write_text('int f( {\n')
    with pytest.raises(RuntimeError, match='failed to compile'):
        build_library(source, tmp_path)
    assert not list(tmp_path.glob('*.so'))  # no half-written library left behind


def _uses_kernel(cell):
    return isinstance(cell.conv_path, KernelConvolutionPath)


def test_without_a_compiler_the_layer_falls_back_with_a_warning(monkeypatch, tmp_path):
    monkeypatch.setenv('CXX', str(tmp_path / 'no-such-compiler'))
    monkeypatch.setenv('ACMIX_KERNEL_CACHE', str(tmp_path))
    monkeypatch.setattr(cpu_kernels, '_state', {'enabled': True, 'library': None, 'error': None})
    with pytest.warns(UserWarning, match='CPU kernels unavailable'):
        cell = WindowAttentionACmix(8, 4, 2, formulation='cpu')
    assert isinstance(cell.conv_path, ConvolutionPath)
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # said once per process, not once per layer
        assert not _uses_kernel(WindowAttentionACmix(8, 4, 2, formulation='cpu'))


@needs_compiler
def test_kernels_can_be_switched_off_for_a_block():
    with kernels_enabled(False):
        assert not _uses_kernel(WindowAttentionACmix(8, 4, 2, formulation='cpu'))
        with kernels_enabled(True):
            assert _uses_kernel(WindowAttentionACmix(8, 4, 2, formulation='cpu'))
        assert conv_path_ops(3) is None
    assert _uses_kernel(WindowAttentionACmix(8, 4, 2, formulation='cpu'))


@needs_compiler
def test_kernel_only_in_the_cpu_formulation_and_up_to_its_size_limit():
    assert _uses_kernel(WindowAttentionACmix(8, 4, 2, kernel_conv=cpu_kernels.MAX_KERNEL_SIZE, formulation='cpu'))
    assert not _uses_kernel(WindowAttentionACmix(8, 4, 2, kernel_conv=cpu_kernels.MAX_KERNEL_SIZE + 2,
                                                 formulation='cpu'))
    assert not _uses_kernel(WindowAttentionACmix(8, 4, 2, formulation='portable'))
