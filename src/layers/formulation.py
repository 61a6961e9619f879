"""Which formulation the ACmix layers (and Swin's DropPath, LayerNorms, GELUs and Dense layers) are built with,
and the one place that picks the implementation of their hot parts (the local-window attention, the
convolution path, LayerNorm, GELU, Dense).

* 'portable': ops that the MindSpore 2.10 API pages list for Ascend and GPU, within the constraints
  they state (grouped convolutions only depthwise, no custom ops, no axis swaps by identity matmuls,
  no infinities), gradients by autodiff. `python -m src.tools.audit_graph` checks the compiled graphs.
* 'cpu': forms tuned for MindSpore's CPU kernels (`cpu/`), CPU only; the same values as the portable ones
  up to fp32 rounding (LayerNorm, GELU, the bias gradients) or exactly.

The device target picks the formulation when a model is built: 'cpu' on CPU, 'portable' on every other
device. The environment variable ACMIX_FORMULATION=portable|cpu, read when a layer is built, forces
one on any device (the CPU test suite runs the portable one this way); a layer's `formulation`
argument overrides both. Both formulations hold the same parameters, so they load the same checkpoints.
"""
import os

import mindspore as ms
from mindspore import nn

from . import linear as portable_linear
from .activation import GELU
from .conv_path import ConvolutionPath
from .cpu import linear as cpu_linear
from .cpu.activation import KernelGELU
from .cpu.conv_path import FoldConvolutionPath, KernelConvolutionPath
from .cpu.kernels import conv_path_ops, gelu_ops, layer_norm_ops
from .cpu.layer_norm import KernelLayerNorm
from .cpu.local_attention import BlockedLocalAttention
from .local_attention import LocalAttention

FORMULATIONS = ('portable', 'cpu')
ENV_FORMULATION = 'ACMIX_FORMULATION'


def resolve_formulation(formulation=None):
    """`formulation` if given, else $ACMIX_FORMULATION if set, else 'cpu' on the CPU device target
    and 'portable' elsewhere."""
    if formulation is None:
        formulation = os.environ.get(ENV_FORMULATION) or None
        if formulation is not None and formulation not in FORMULATIONS:
            raise ValueError(f'{ENV_FORMULATION} must be one of {", ".join(FORMULATIONS)}, got {formulation!r}')
    if formulation is None:
        return 'cpu' if ms.get_context('device_target') == 'CPU' else 'portable'
    if formulation not in FORMULATIONS:
        raise ValueError(f'formulation must be one of {", ".join(FORMULATIONS)}, got {formulation!r}')
    return formulation


def local_attention(formulation, head, head_dim, kernel_size, stride, dilation, scaling):
    """The local-window attention of the ResNet layer: construct(q, k, v, pe)."""
    cls = BlockedLocalAttention if formulation == 'cpu' else LocalAttention
    return cls(head, head_dim, kernel_size, stride, dilation, scaling)


def convolution_path(formulation, num_heads, head_dim, out_channels, kernel_size, stride=1, dilation=1,
                     channels_last=False):
    """The convolution path: construct(qkv, fc_weight, fc_bias, dep_weight). In the CPU formulation
    the ResNet layout (NCHW) runs FoldConvolutionPath, the Swin layout (channels last, stride 1)
    the C++ kernel where it applies and can be built (else the portable path; see cpu/kernels.py)."""
    portable = ConvolutionPath(num_heads, head_dim, out_channels, kernel_size, stride, dilation, channels_last)
    if formulation != 'cpu':
        return portable
    if not channels_last:
        return FoldConvolutionPath(num_heads, head_dim, out_channels, kernel_size, stride, dilation)
    kernel_ops = conv_path_ops(kernel_size, head_dim) if stride == 1 and dilation == 1 else None
    return portable if kernel_ops is None else KernelConvolutionPath(kernel_ops, portable)


def layer_norm(formulation, dim, epsilon):
    """LayerNorm over the last axis, nn.LayerNorm((dim,), epsilon=epsilon) and its parameters; in the CPU
    formulation computed by the C++ kernel pair where it can be built."""
    kernel_ops = layer_norm_ops() if formulation == 'cpu' else None
    return nn.LayerNorm((dim,), epsilon=epsilon) if kernel_ops is None else KernelLayerNorm(dim, epsilon, kernel_ops)


def gelu(formulation):
    """The exact GELU; in the CPU formulation computed by the C++ kernel pair where it can be built."""
    kernel_ops = gelu_ops() if formulation == 'cpu' else None
    return GELU() if kernel_ops is None else KernelGELU(kernel_ops)


def dense(formulation, in_channels, out_channels, **kwargs):
    """nn.Dense(in_channels, out_channels, **kwargs); in the CPU formulation with a matmul for the bias
    gradient (cpu/linear.py)."""
    return (cpu_linear.Dense if formulation == 'cpu' else nn.Dense)(in_channels, out_channels, **kwargs)


def linear(formulation):
    """A Cell x @ weight.T + bias of its three inputs, as `dense` computes it."""
    return cpu_linear.Linear() if formulation == 'cpu' else portable_linear.Linear()
