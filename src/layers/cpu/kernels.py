"""Hand-written CPU kernels, compiled on first use and run through `ops.Custom(func_type='aot')`.

Kernel pairs (forward, backward) in one library built from `csrc/` (each source says why it exists),
used by the CPU formulation (`..formulation`): the convolution path of the Swin ACmix layer, fc and
grouped convolution fused (`conv_path_op`), LayerNorm over the last axis (`layer_norm_op`) and the
exact GELU (`gelu_op`). Each pair is one Custom op whose `bprop` calls the backward kernel, so a layer
uses it as any other op. Layers ask for them when they are built. A function returns None, and the
layer runs MindSpore ops instead (the portable convolution path `..conv_path.ConvolutionPath`,
nn.LayerNorm, `..activation.GELU`), when
* the device target is not CPU (the kernels are C++ for the host);
* for the convolution path, its kernel is larger than MAX_KERNEL_SIZE (7x7) or head_dim is not a
  multiple of GROUPS_PER_VECTOR (8; every registered Swin has 32);
* the kernels are switched off: `with kernels_enabled(False):` around the model's construction, or
  the environment variable `ACMIX_CPU_KERNELS=0` (read when a layer is built);
* the library cannot be built (no C++ compiler, or a cache folder that cannot be written); a warning
  says why, once per process.
All are float32; the layers run MindSpore ops for other dtypes and in Cells that mixed precision set
to a half type (`..precision.set_to_half`: called eagerly, such a Cell's input is still float32).

The library is compiled from the sources of `csrc/` with `$CXX` (default g++) into
`$ACMIX_KERNEL_CACHE` (default `~/.cache/acmix_mindspore`), named by a hash of the sources, compiler
and flags, so an edited source rebuilds and concurrent processes (one per device under msrun) never
see a half-written file. The kernels run on as many threads as the process may use (its CPU affinity;
the convolution path one image per thread, the others blocks of rows or elements);
`ACMIX_KERNEL_THREADS=n` (read at every call) caps that, e.g. for several training processes on one
host.
"""
import contextlib
import hashlib
import math
import os
import platform
import subprocess
import tempfile
import warnings
from pathlib import Path

import mindspore as ms
from mindspore import ops

SOURCE_DIR = Path(__file__).resolve().parent / 'csrc'  # every .cc in it goes into the one library
ENV_SWITCH = 'ACMIX_CPU_KERNELS'
ENV_CACHE = 'ACMIX_KERNEL_CACHE'
MAX_KERNEL_SIZE = 7  # the convolution path's kernel is compiled for 1x1, 3x3, 5x5 and 7x7
GROUPS_PER_VECTOR = 8  # it computes 8 groups (head_dim indices) per vector: head_dim must be a multiple

# enabled: None follows ENV_SWITCH, read when a layer asks; kernels_enabled() overrides it
_state = {'enabled': None, 'library': None, 'error': None}


@contextlib.contextmanager
def kernels_enabled(enabled):
    """Layers built inside the block use the CPU kernels if `enabled` (and they are available)."""
    previous, _state['enabled'] = _state['enabled'], bool(enabled)
    try:
        yield
    finally:
        _state['enabled'] = previous


def _cpu_flags():
    """-mavx2 -mfma where the CPU has them (the vector code then compiles to 256-bit FMAs)."""
    if platform.machine().lower() not in ('x86_64', 'amd64'):
        return []
    try:
        text = Path('/proc/cpuinfo').read_text()
    except OSError:
        return []
    flags = next((line.split(':', 1)[1].split() for line in text.splitlines() if line.startswith('flags')), [])
    return ['-mavx2', '-mfma'] if {'avx2', 'fma'} <= set(flags) else []


def build_library(source_dir=SOURCE_DIR, cache_dir=None):
    """Compile the .cc files of `source_dir` (with its headers) into one shared library in the cache,
    once per sources, compiler and flags; returns its path. Raises RuntimeError with the compiler's
    message if that fails."""
    cxx = os.environ.get('CXX', 'g++')
    flags = ['-O3', '-std=c++17', '-shared', '-fPIC', '-pthread'] + _cpu_flags()
    cache = Path(cache_dir or os.environ.get(ENV_CACHE) or Path.home() / '.cache' / 'acmix_mindspore')
    source_dir = Path(source_dir)
    sources = sorted(source_dir.glob('*.cc'))
    if not sources:
        raise RuntimeError(f'no C++ sources (*.cc) in {source_dir}')
    digest = hashlib.sha256(' '.join([cxx] + flags).encode())
    for path in sorted(sources + list(source_dir.glob('*.h'))):
        digest.update(path.name.encode() + b'\0' + path.read_bytes())
    target = cache / f'acmix_cpu-{digest.hexdigest()[:16]}.so'
    if target.exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix='.so', dir=cache)
    os.close(fd)
    try:
        result = subprocess.run([cxx, *flags, *map(str, sources), '-o', tmp], capture_output=True, text=True)
    except OSError as err:
        os.unlink(tmp)
        raise RuntimeError(f'cannot run the C++ compiler {cxx!r}: {err}') from err
    if result.returncode:
        os.unlink(tmp)
        raise RuntimeError(f'{cxx} failed to compile {source_dir}:\n{result.stderr.strip()[-2000:]}')
    os.replace(tmp, target)  # atomic: another process sees the old state or the whole library
    return target


def _library():
    if _state['library'] is None and _state['error'] is None:
        try:
            _state['library'] = build_library()
        except (RuntimeError, OSError) as err:  # OSError: the cache folder cannot be written
            _state['error'] = err
            warnings.warn(f'CPU kernels unavailable, the CPU formulation falls back to slower MindSpore ops: {err}')
    return _state['library']


def map_size(qkv_shape):
    """(B, H, W) of a qkv shape, (B, H, W, 3C) or window-partitioned (B, H / ws, W / ws, ws * ws, 3C)."""
    if len(qkv_shape) == 4:
        return tuple(qkv_shape[:3])
    b, hn, wn, n = qkv_shape[:4]
    ws = math.isqrt(n)
    if ws * ws != n:
        raise ValueError(f'a window-partitioned qkv needs a square window axis, got {n} tokens per window')
    return b, hn * ws, wn * ws


def _kernel_library():
    """The library's path, or None when the kernels are off, the device is not CPU or it cannot be built."""
    enabled = _state['enabled']
    if enabled is None:
        enabled = os.environ.get(ENV_SWITCH, '1') != '0'
    if not enabled or ms.get_context('device_target') != 'CPU':
        return None
    return _library()


def _kernel(library, name, out_shape, out_dtype=None, bprop=None):
    """The kernel `name` of the library as an ops.Custom. out_dtype defaults to out_shape: most kernels
    return inputs' shapes and dtypes (the map names those inputs). With `bprop` (inputs..., out, dout)
    -> the inputs' gradients, MindSpore differentiates the op by that function."""
    return ops.Custom(f'{library}:{name}', func_type='aot', out_shape=out_shape,
                      out_dtype=out_dtype or out_shape, bprop=bprop)


def conv_path_op(kernel_size, head_dim):
    """The fused Swin ACmix convolution path for a kernel_size x kernel_size convolution with head_dim
    groups as one differentiable Custom op (its gradients from the backward kernel), or None when the
    kernels are off, the device is not CPU, kernel_size is over MAX_KERNEL_SIZE, head_dim is not a
    multiple of GROUPS_PER_VECTOR or the library cannot be built. float32 only.

    op(qkv (B, H, W, 3C), fc_w (k2, 3nh), fc_b (k2), dep_w (C, k2, k, k)) -> (B, H, W, C)
    qkv may instead be window-partitioned, (B, H / ws, W / ws, ws * ws, 3C); the output is the whole map
    (B, H, W, C) either way.
    """
    fits = kernel_size <= MAX_KERNEL_SIZE and head_dim % GROUPS_PER_VECTOR == 0
    library = _kernel_library() if fits else None
    if library is None:
        return None
    backward = _kernel(library, 'FcConvBackward', lambda qkv, fc_w, fc_b, dep_w, dy: (qkv, fc_w, fc_b, dep_w))

    def bprop(qkv, fc_w, fc_b, dep_w, out, dout):
        return backward(qkv, fc_w, fc_b, dep_w, dout)
    return _kernel(library, 'FcConvForward', lambda qkv, fc_w, fc_b, dep_w: (*map_size(qkv), dep_w[0]),
                   lambda qkv, fc_w, fc_b, dep_w: qkv, bprop)


def layer_norm_op():
    """A LayerNorm over the last axis as one differentiable Custom op, or None as conv_path_op.
    float32 only. op(x (..., C), gamma (C), beta (C), eps (1,)) -> y (x's shape); eps gets no gradient
    (a zero: the backward kernel computes those of x, gamma and beta)."""
    library = _kernel_library()
    if library is None:
        return None
    backward = _kernel(library, 'LayerNormBackward', lambda x, gamma, eps, dy: (x, gamma, gamma))

    def bprop(x, gamma, beta, eps, out, dout):
        dx, dgamma, dbeta = backward(x, gamma, eps, dout)
        return dx, dgamma, dbeta, ops.zeros_like(eps)
    return _kernel(library, 'LayerNormForward', lambda x, gamma, beta, eps: x, bprop=bprop)


def gelu_op():
    """The exact GELU, x * Phi(x), as one differentiable Custom op, or None as conv_path_op. float32
    only."""
    library = _kernel_library()
    if library is None:
        return None
    backward = _kernel(library, 'GeluBackward', lambda x, dy: x)

    def bprop(x, out, dout):
        return (backward(x, dout),)
    return _kernel(library, 'GeluForward', lambda x: x, bprop=bprop)
