"""ACmix for convolutional networks: 7x7 local-window self-attention and a shift-initialised
grouped convolution that share one set of 1x1 q/k/v projections (Pan et al., CVPR 2022, Fig. 2).

Numerically this follows the official `ACmix` of LeapLabTHU/ACmix (ResNet/test_bottleneck.py): q, k, v
from three 1x1 convolutions with bias; the head_dim ** -0.5 scale on q only and on the attention path
only; reflection padding of k, v and the positional encoding; the head-major head split; the
convolution path's fc without bias and its grouped convolution without bias, channel d*9 + j.
Where the official code crashes on valid input this layer does better, and behaves identically
everywhere else:

* odd feature sizes at stride 2 give ceil(h/2) x ceil(w/2), as a convolution does;
* `kernel_conv` may be any odd size (the official padding is hard-coded for 3);
* `dilation` dilates the attention window (and the convolution path), instead of crashing;
* the positional grid is built in the input's dtype, so fp16 (mixed precision) runs.

The two hot parts, the local attention and the convolution path, come in two formulations
(`formulation.py`): portable ops for Ascend and GPU, and forms tuned for MindSpore's CPU kernels.
"""
import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops

from .conv_path import shift_kernels
from .formulation import resolve_formulation

ACMIX_PATHS = ('both', 'attention', 'conv')


def check_odd(name, value):
    if not isinstance(value, int) or value < 1 or value % 2 == 0:
        raise ValueError(f'{name} must be a positive odd integer, got {value!r}')


def acmix_paths(paths):
    """(use_att, use_conv) of an ACmix layer's `paths` argument."""
    if paths not in ACMIX_PATHS:
        raise ValueError(f'paths must be one of {ACMIX_PATHS}, got {paths!r}')
    return paths in ('both', 'attention'), paths in ('both', 'conv')


def mixing_rates():
    """rate1 (attention) and rate2 (convolution) of a layer running both paths, both 0.5 as in the
    official init_rate_half; named as the official parameters."""
    return (Parameter(Tensor([0.5], ms.float32), name='rate1'),
            Parameter(Tensor([0.5], ms.float32), name='rate2'))


class LocalAttentionACmix(nn.Cell):
    """The ResNet ACmix layer (replaces the 3x3 convolution of a bottleneck).

    Args:
        in_planes, out_planes: channels in and out.
        kernel_att: side of the local attention window (odd).
        head: number of attention heads; out_planes must be divisible by it.
        kernel_conv: kernel of the grouped convolution path (odd).
        stride: 1 or 2 (any positive integer works).
        dilation: dilation of the attention window and of the convolution path.
        paths: 'both' (attention + convolution summed with learnable rates, the paper's ACmix),
            'attention' (attention path only) or 'conv' (convolution path only).
        learnable_shift: if False the grouped convolution keeps its shift kernels fixed.
        formulation: 'portable', 'cpu', a Formulation, or None (the device target decides; see
            formulation.py).

    Input (B, in_planes, H, W); output (B, out_planes, ceil(H/stride), ceil(W/stride)).
    Parameter names follow the official module, so converted state_dicts load directly.
    """

    def __init__(self, in_planes, out_planes, kernel_att=7, head=4, kernel_conv=3, stride=1,
                 dilation=1, paths='both', learnable_shift=True, formulation=None):
        super().__init__()
        check_odd('kernel_att', kernel_att)
        check_odd('kernel_conv', kernel_conv)
        if out_planes % head:
            raise ValueError(f'out_planes ({out_planes}) must be divisible by head ({head})')
        if stride < 1 or dilation < 1:
            raise ValueError(f'stride and dilation must be >= 1, got {stride} and {dilation}')
        self.use_att, self.use_conv = acmix_paths(paths)
        self.formulation = resolve_formulation(formulation)
        self.out_planes = out_planes
        self.head = head
        self.head_dim = out_planes // head
        self.kernel_att = kernel_att
        self.kernel_conv = kernel_conv
        self.stride = stride
        self.dilation = dilation

        self.conv1 = nn.Conv2d(in_planes, out_planes, 1, pad_mode='valid', has_bias=True)
        self.conv2 = nn.Conv2d(in_planes, out_planes, 1, pad_mode='valid', has_bias=True)
        self.conv3 = nn.Conv2d(in_planes, out_planes, 1, pad_mode='valid', has_bias=True)
        self.conv1x1 = ops.Conv2D(3 * out_planes, 1, pad_mode='valid')
        self.bias_add = ops.BiasAdd()
        if self.use_att:
            self.conv_p = nn.Conv2d(2, self.head_dim, 1, pad_mode='valid', has_bias=True)
            self.padding_att = (dilation * (kernel_att - 1) + 1) // 2
            # As in the official code the scale sits on q, so it also scales the positional term.
            self.attention = self.formulation.local_attention(head, self.head_dim, kernel_att, stride, dilation,
                                                              float(self.head_dim) ** -0.5)
        if self.use_conv:
            # The official fc has no bias in the ResNet layer (the Swin layer has one).
            self.fc = nn.Conv2d(3 * head, kernel_conv * kernel_conv, 1, pad_mode='valid', has_bias=False)
            # The official dep_conv ends up without bias: its bias is assigned init_rate_0(...) == None.
            # The Cell holds the parameter (official name and shape); the path computes with it.
            self.dep_conv = nn.Conv2d(
                kernel_conv * kernel_conv * self.head_dim, out_planes, kernel_conv, stride=stride,
                pad_mode='pad', padding=dilation * (kernel_conv // 2), dilation=dilation,
                group=self.head_dim, has_bias=False,
                weight_init=Tensor(shift_kernels(out_planes, kernel_conv)))
            self.dep_conv.weight.requires_grad = learnable_shift
            self.conv_path = self.formulation.convolution_path(head, self.head_dim, out_planes, kernel_conv, stride,
                                                               dilation)
        if self.use_att and self.use_conv:
            self.rate1, self.rate2 = mixing_rates()

    @property
    def min_input_size(self):
        """Smallest feature-map side this layer takes: reflection padding must be smaller than the map."""
        return self.padding_att + 1 if self.use_att else 1

    def _position_encoding(self, h, w, dtype):
        # (1, 2, h, w): channel 0 varies along the width (x), channel 1 along the height (y).
        loc_w = ops.tile(ops.linspace(-1.0, 1.0, w).view(1, 1, 1, w), (1, 1, h, 1))
        loc_h = ops.tile(ops.linspace(-1.0, 1.0, h).view(1, 1, h, 1), (1, 1, 1, w))
        loc = ops.cat((loc_w, loc_h), 1).astype(dtype)
        return self.conv_p(loc)  # (1, head_dim, h, w)

    def _convolution(self, qkv, rate=None):
        """The convolution path of qkv (B, 3 * out_planes, H, W), times `rate` if given."""
        k2 = self.kernel_conv * self.kernel_conv
        fc_weight = self.fc.weight.reshape(k2, 3 * self.head)
        if rate is not None:
            # conv(fc(qkv) * rate) == rate * conv(fc(qkv)): the small fc weight is scaled, and the
            # output need not be kept for rate's gradient.
            fc_weight = fc_weight * rate
        return self.conv_path(qkv, fc_weight, None, self.dep_conv.weight)

    def construct(self, x):
        # conv1, conv2 and conv3 (kept as cells for their parameters and init) run as one 1x1
        # convolution: one pass over x forward and backward, one input gradient instead of three
        # summed, and the convolution path takes its output as is. qkv: (b, 3 * out_planes, h, w).
        weight = ops.cat((self.conv1.weight, self.conv2.weight, self.conv3.weight))
        bias = ops.cat((self.conv1.bias, self.conv2.bias, self.conv3.bias))
        qkv = self.bias_add(self.conv1x1(x, weight), bias)
        if not self.use_att:
            return self._convolution(qkv)
        q, k, v = ops.split(qkv, self.out_planes, 1)
        h, w = x.shape[2], x.shape[3]
        attention = self.attention(q, k, v, self._position_encoding(h, w, qkv.dtype))
        if not self.use_conv:
            return attention
        return self.rate1 * attention + self._convolution(qkv, self.rate2)
