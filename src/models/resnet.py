"""ResNet-26/38/50 with ACmix in place of the bottleneck's 3x3 convolution (the official
ACmix ResNet, LeapLabTHU/ACmix ResNet/ResNet_ImageNet.py), and the plain baselines."""
from functools import partial

from mindspore import nn, ops
from mindspore.common.initializer import HeNormal, initializer

from ..layers import LocalAttentionACmix, resolve_formulation
from .interface import check_out_indices, feature_info, forget_compiled_graphs
from .registry import InputSizeError, register_model


def batch_norm(channels):
    # momentum 0.9 here is torch's 0.1.
    return nn.BatchNorm2d(channels, eps=1e-5, momentum=0.9)


def conv1x1(in_planes, out_planes, stride=1):
    return nn.Conv2d(in_planes, out_planes, 1, stride=stride, pad_mode='valid', has_bias=False)


def conv3x3(in_planes, out_planes, stride=1, dilation=1):
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, pad_mode='pad', padding=dilation,
                     dilation=dilation, has_bias=False)


class StemMaxPool(nn.Cell):
    """torch's MaxPool2d(3, stride=2, padding=1) after the stem ReLU. Its input is >= 0, so zero
    padding equals torch's -inf padding; written as pad + 'valid' pooling because MindSpore's padded
    MaxPool2d becomes MaxPool3DWithArgmax, which the ONNX exporter does not support."""

    def __init__(self):
        super().__init__()
        self.pad = ops.Pad(((0, 0), (0, 0), (1, 1), (1, 1)))
        self.pool = nn.MaxPool2d(kernel_size=3, stride=2, pad_mode='valid')

    def construct(self, x):
        return self.pool(self.pad(x))


class Bottleneck(nn.Cell):
    """ResNet v1.5 bottleneck (stride on the middle layer); `mixer(width, width, stride,
    dilation)` builds that middle layer: ACmix or a 3x3 convolution."""
    expansion = 4

    def __init__(self, inplanes, planes, mixer, stride=1, dilation=1, downsample=None):
        super().__init__()
        self.conv1 = conv1x1(inplanes, planes)
        self.bn1 = batch_norm(planes)
        self.conv2 = mixer(planes, planes, stride, dilation)
        self.bn2 = batch_norm(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = batch_norm(planes * self.expansion)
        self.relu = nn.ReLU()
        self.downsample = downsample
        self.stride = stride
        self.min_input_size = getattr(self.conv2, 'min_input_size', 1)

    def construct(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Cell):
    """Bottleneck ResNet with ACmix (acmix=True) or 3x3 convolutions.

    Args:
        layers: blocks per stage, e.g. (3, 4, 6, 3) for ResNet-50.
        num_classes: classifier outputs.
        acmix: ACmix (kernel_att, head, kernel_conv, paths, learnable_shift) or plain 3x3 convs.
        formulation: of the ACmix layers, 'portable', 'cpu' or None (the device target decides;
            see src/layers/formulation.py); no effect on the plain ResNets.
        base_channels: width of the stem and first stage (64 in the paper); stages are 1/2/4/8x.
        stem: 'imagenet' (7x7/2 conv + 3x3/2 max pool) or 'small' (3x3/1 conv, no pool) for
            32-64 px inputs.
        replace_stride_with_dilation: per stage 2-4, trade the stride for dilation.
        features_only: instead of logits, construct returns a tuple of the NCHW outputs of the
            stages in `out_indices` (layer1..layer4 are 0..3; strides 4, 8, 16, 32 with the
            imagenet stem), described by `feature_info`. The classifier is not built; stages after
            the last output are built (checkpoints still load strictly) but not run.
    """
    classifier_name = 'fc'  # parameters left out when fine-tuning with a new head

    def __init__(self, layers, num_classes=1000, acmix=True, base_channels=64, stem='imagenet',
                 kernel_att=7, head=4, kernel_conv=3, paths='both', learnable_shift=True,
                 replace_stride_with_dilation=(False, False, False), formulation=None,
                 features_only=False, out_indices=(0, 1, 2, 3)):
        super().__init__()
        if stem not in ('imagenet', 'small'):
            raise ValueError(f"stem must be 'imagenet' or 'small', got {stem!r}")
        if len(replace_stride_with_dilation) != 3:
            raise ValueError('replace_stride_with_dilation needs one flag for each of stages 2-4')
        if acmix:
            mixer = partial(_acmix_mixer, kernel_att=kernel_att, head=head, kernel_conv=kernel_conv,
                            paths=paths, learnable_shift=learnable_shift,
                            formulation=resolve_formulation(formulation))  # resolved once for every layer
        else:
            mixer = conv3x3
        self.stem = stem
        self.inplanes = base_channels
        self.dilation = 1
        if stem == 'imagenet':
            self.conv1 = nn.Conv2d(3, base_channels, 7, stride=2, pad_mode='pad', padding=3, has_bias=False)
            self.maxpool = StemMaxPool()
        else:
            self.conv1 = conv3x3(3, base_channels)
            self.maxpool = nn.Identity()
        self.bn1 = batch_norm(base_channels)
        self.relu = nn.ReLU()
        strides = (1, 2, 2, 2)
        dilate = (False,) + tuple(replace_stride_with_dilation)
        reduction = 4 if stem == 'imagenet' else 1
        channels, reductions = [], []
        for i, (blocks, stride) in enumerate(zip(layers, strides)):
            stage = self._make_stage(mixer, base_channels * 2 ** i, blocks, stride, dilate[i])
            setattr(self, f'layer{i + 1}', stage)
            reduction *= 1 if dilate[i] else stride
            channels.append(base_channels * 2 ** i * Bottleneck.expansion)
            reductions.append(reduction)
        self.stage_names = tuple(f'layer{i + 1}' for i in range(len(layers)))
        self.num_features = channels[-1]
        self.features_only = features_only
        self.checkpoint_skip_prefixes, self.optional_checkpoint_prefixes = (), ()
        if features_only:
            self.out_indices = check_out_indices(out_indices, len(layers))
            self.feature_info = feature_info(channels, reductions, self.stage_names, self.out_indices)
            self.checkpoint_skip_prefixes = ('fc.',)  # a classification checkpoint's classifier
            self.num_classes = 0
        else:
            self.reset_classifier(num_classes)
        self._init_weights()

    def reset_classifier(self, num_classes):
        """A new, freshly initialised classifier for `num_classes` (0: none, forward_head returns
        the pooled features)."""
        if self.features_only:
            raise ValueError('a features_only model has no classifier')
        self.num_classes = num_classes
        self.fc = nn.Dense(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        forget_compiled_graphs(self)

    def _make_stage(self, mixer, planes, blocks, stride, dilate):
        previous_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        downsample = None
        if stride != 1 or self.inplanes != planes * Bottleneck.expansion:
            downsample = nn.SequentialCell(conv1x1(self.inplanes, planes * Bottleneck.expansion, stride),
                                           batch_norm(planes * Bottleneck.expansion))
        cells = [Bottleneck(self.inplanes, planes, mixer, stride, previous_dilation, downsample)]
        self.inplanes = planes * Bottleneck.expansion
        cells += [Bottleneck(self.inplanes, planes, mixer, dilation=self.dilation) for _ in range(1, blocks)]
        return nn.SequentialCell(cells)

    def _init_weights(self):
        # As the official ResNet: kaiming-normal (fan_out) over every convolution, which also
        # overwrites ACmix's shift kernels, unless they are fixed shifts (then they are kept).
        for _, cell in self.cells_and_names():
            if isinstance(cell, nn.Conv2d) and cell.weight.requires_grad:
                cell.weight.set_data(initializer(HeNormal(mode='fan_out', nonlinearity='relu'),
                                                 cell.weight.shape, cell.weight.dtype))

    def _fits(self, size):
        """Whether every block gets a feature map at least as large as it needs."""
        if self.stem == 'imagenet':
            size = -(-size // 4)  # the 7x7/2 conv and the 3x3/2 pool each give ceil(n / 2)
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in stage.cell_list:
                if size < block.min_input_size:
                    return False
                size = -(-size // block.stride)
        return True

    def check_input_size(self, size):
        """Raise InputSizeError, naming the smallest size that works, if square inputs of `size`
        pixels are too small (ACmix's reflection padding needs every map larger than the padding)."""
        if not self._fits(size):
            smallest = next((s for s in range(size + 1, 8193) if self._fits(s)), None)
            raise InputSizeError(
                f'image size {size} is too small for this network: the local attention of some ACmix '
                f'layer would get a feature map no larger than its padding. Sizes from {smallest} up work.')

    def _stem(self, x):
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def forward_features(self, x):
        """(B, 3, H, W) -> the last stage's output (B, C, h, w), before pooling."""
        if self.features_only:
            raise ValueError('forward_features: a features_only model returns its maps from construct')
        return self.layer4(self.layer3(self.layer2(self.layer1(self._stem(x)))))

    def forward_head(self, x):
        """(B, C, h, w) of forward_features -> logits (B, num_classes)."""
        return self.fc(x.mean((2, 3)))

    def _feature_maps(self, x):
        x = self._stem(x)
        maps = ()
        for i, name in enumerate(self.stage_names):
            if i <= self.out_indices[-1]:
                x = getattr(self, name)(x)
                if i in self.out_indices:
                    maps = maps + (x,)
        return maps

    def construct(self, x):
        if self.features_only:
            return self._feature_maps(x)
        return self.forward_head(self.forward_features(x))


def _acmix_mixer(in_planes, out_planes, stride, dilation, **kwargs):
    return LocalAttentionACmix(in_planes, out_planes, stride=stride, dilation=dilation, **kwargs)


@register_model(settings=dict(layers=(1, 2, 4, 1), acmix=True))
def acmix_resnet26(**kwargs):
    return ResNet(**kwargs)


@register_model(settings=dict(layers=(2, 3, 5, 2), acmix=True))
def acmix_resnet38(**kwargs):
    return ResNet(**kwargs)


@register_model(settings=dict(layers=(3, 4, 6, 3), acmix=True))
def acmix_resnet50(**kwargs):
    return ResNet(**kwargs)


@register_model(settings=dict(layers=(1, 2, 4, 1), acmix=False))
def resnet26(**kwargs):
    return ResNet(**kwargs)


@register_model(settings=dict(layers=(2, 3, 5, 2), acmix=False))
def resnet38(**kwargs):
    return ResNet(**kwargs)


@register_model(settings=dict(layers=(3, 4, 6, 3), acmix=False))
def resnet50(**kwargs):
    return ResNet(**kwargs)


# For 32-64 px CPU demos and tests: 4 stages of one block, 16 channels at first, a 3x3/1 stem.
_MINI = dict(layers=(1, 1, 1, 1), base_channels=16, stem='small')


@register_model(settings=dict(_MINI, acmix=True))
def acmix_resnet_mini(**kwargs):
    return ResNet(**kwargs)


@register_model(settings=dict(_MINI, acmix=False))
def resnet_mini(**kwargs):
    """The plain-convolution twin of acmix_resnet_mini."""
    return ResNet(**kwargs)
