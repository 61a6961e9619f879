"""Which formulation the ACmix layers (and Swin's DropPath, LayerNorms, GELUs and Dense layers) are built with,
and the one place that picks the implementation of their hot parts (the local-window attention, the
convolution path, LayerNorm, GELU, Dense).

* 'portable': ops that the MindSpore 2.10 API pages list for Ascend and GPU, within the constraints
  they state (grouped convolutions only depthwise, no custom ops, no axis swaps by identity matmuls,
  no infinities), gradients by autodiff. `python -m src.tools.audit_graph` checks the compiled graphs.
* 'cpu': forms tuned for MindSpore's CPU kernels (`cpu/`), CPU only; the same values as the portable ones
  up to fp32 rounding (LayerNorm, GELU, the bias gradients) or exactly.

The formulation is resolved once, when a model (or a layer built on its own) is built, into a
`Formulation`: the layer factory its layers are built with, passed down as timm passes `norm_layer`
and `act_layer`. The device target picks it: 'cpu' on CPU, 'portable' on every other device. The
environment variable ACMIX_FORMULATION=portable|cpu, read when it is resolved, forces one on any device
(the CPU test suite runs the portable one this way); a model's or layer's `formulation` argument
overrides both. Both formulations hold the same parameters, so they load the same checkpoints.
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
from .cpu.kernels import conv_path_op, gelu_op, layer_norm_op
from .cpu.layer_norm import KernelLayerNorm
from .cpu.local_attention import BlockedLocalAttention
from .drop_path import DropPath
from .local_attention import LocalAttention

FORMULATIONS = ('portable', 'cpu')
ENV_FORMULATION = 'ACMIX_FORMULATION'


def resolve_formulation(formulation=None):
    """The Formulation named by `formulation` ('portable', 'cpu', or a Formulation, returned as it is);
    if None, by $ACMIX_FORMULATION if set, else 'cpu' on the CPU device target and 'portable' elsewhere."""
    if isinstance(formulation, Formulation):
        return formulation
    if formulation is None:
        formulation = os.environ.get(ENV_FORMULATION) or None
        if formulation is not None and formulation not in FORMULATIONS:
            raise ValueError(f'{ENV_FORMULATION} must be one of {", ".join(FORMULATIONS)}, got {formulation!r}')
    if formulation is None:
        formulation = 'cpu' if ms.get_context('device_target') == 'CPU' else 'portable'
    return Formulation(formulation)  # which checks the name


class Formulation:
    """The layers whose implementation depends on the formulation, built by one factory: `name` is
    'portable' or 'cpu'. Each method returns a new Cell; the parameters are the same in both."""

    def __init__(self, name):
        if name not in FORMULATIONS:
            raise ValueError(f'formulation must be one of {", ".join(FORMULATIONS)}, got {name!r}')
        self.name = name
        self.cpu = name == 'cpu'

    def __repr__(self):
        return f'Formulation({self.name!r})'

    def local_attention(self, head, head_dim, kernel_size, stride, dilation, scaling):
        """The local-window attention of the ResNet layer: construct(q, k, v, pe)."""
        cls = BlockedLocalAttention if self.cpu else LocalAttention
        return cls(head, head_dim, kernel_size, stride, dilation, scaling)

    def convolution_path(self, num_heads, head_dim, out_channels, kernel_size, stride=1, dilation=1,
                         channels_last=False):
        """The convolution path: construct(qkv, fc_weight, fc_bias, dep_weight). In the CPU formulation
        the ResNet layout (NCHW) runs FoldConvolutionPath, the Swin layout (channels last, stride 1)
        the C++ kernel where it applies and can be built (else the portable path; see cpu/kernels.py)."""
        portable = ConvolutionPath(num_heads, head_dim, out_channels, kernel_size, stride, dilation, channels_last)
        if not self.cpu:
            return portable
        if not channels_last:
            return FoldConvolutionPath(num_heads, head_dim, out_channels, kernel_size, stride, dilation)
        kernel_op = conv_path_op(kernel_size, head_dim) if stride == 1 and dilation == 1 else None
        return portable if kernel_op is None else KernelConvolutionPath(kernel_op, portable)

    def layer_norm(self, dim, epsilon=1e-5):
        """LayerNorm over the last axis, nn.LayerNorm((dim,), epsilon=epsilon) and its parameters, with
        torch's default epsilon (MindSpore's is 1e-7); in the CPU formulation computed by the C++
        kernel pair where it can be built."""
        kernel_op = layer_norm_op() if self.cpu else None
        if kernel_op is None:
            return nn.LayerNorm((dim,), epsilon=epsilon)
        return KernelLayerNorm(dim, epsilon, kernel_op)

    def gelu(self):
        """The exact GELU (erf, torch's default); in the CPU formulation computed by the C++ kernel pair
        where it can be built."""
        kernel_op = gelu_op() if self.cpu else None
        return GELU() if kernel_op is None else KernelGELU(kernel_op)

    def dense(self, in_channels, out_channels, **kwargs):
        """nn.Dense(in_channels, out_channels, **kwargs); in the CPU formulation with a matmul for the bias
        gradient (cpu/linear.py)."""
        return (cpu_linear.Dense if self.cpu else nn.Dense)(in_channels, out_channels, **kwargs)

    def linear(self):
        """A Cell x @ weight.T + bias of its three inputs, as `dense` computes it."""
        return cpu_linear.Linear() if self.cpu else portable_linear.Linear()

    def drop_path(self, drop_prob):
        """Stochastic depth with drop_prob (the identity for 0); in the CPU formulation the mask is
        applied by a matmul (drop_path.py)."""
        return DropPath(drop_prob, mask_by_matmul=self.cpu) if drop_prob > 0 else nn.Identity()
