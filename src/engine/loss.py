"""The training loss of both recipes."""
import mindspore as ms
from mindspore import nn, ops


class SoftTargetCrossEntropy(nn.Cell):
    """Cross-entropy with probability targets (label-smoothed, mixed), computed in fp32: timm's
    SoftTargetCrossEntropy (official Swin), and with one-hot smoothed targets the official ResNet
    script's smoothed loss."""

    def construct(self, logits, targets):
        return (-targets * ops.log_softmax(logits.astype(ms.float32), axis=-1)).sum(-1).mean()
