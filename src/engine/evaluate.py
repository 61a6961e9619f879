"""Top-1, top-5 and loss over every sample of a dataset."""
import mindspore as ms
import numpy as np
from mindspore import ops

from ..data.imagefolder import DataError
from .train_step import SumOverRanks


def log_softmax(logits):
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def evaluate(net, dataset, progress=None, jit_level='O0', sum_over_ranks=False):
    """Runs `net` in eval mode over `dataset` (images, int labels), keeping every sample
    (a partial last batch included). Returns {'top1', 'top5', 'loss', 'count'}. `progress`: a
    src.progress.Progress, updated per batch. jit_level: of the compiled forward, 'O0' or 'O1'.
    sum_over_ranks: `dataset` is this rank's shard (build_dataset's 'val' split with group_size > 1);
    the counts and the loss sum of all ranks are added up, so every rank returns the result over
    the whole set. Every rank must call it (the ranks' batch counts may differ).

    A smaller last batch is padded to the first batch's size and the padding is dropped from the
    outputs, so graph mode compiles one shape only.
    """
    net.set_train(False)

    @ms.jit(jit_level=jit_level)
    def forward(images):
        return net(images)

    correct1 = correct5 = 0
    loss_sum, count = 0.0, 0
    num_batches = dataset.get_dataset_size()
    batch_size = None
    for i, (images, labels) in enumerate(dataset.create_tuple_iterator(num_epochs=1), 1):
        n = images.shape[0]
        batch_size = batch_size or n
        if n < batch_size:
            pad = ops.tile(images[:1], (batch_size - n, 1, 1, 1))
            images = ops.cat((images, pad), 0)
        logits = forward(images).asnumpy()[:n].astype(np.float64)
        labels = labels.asnumpy().astype(np.int64).reshape(-1)
        k = min(5, logits.shape[1])
        top = np.argsort(-logits, axis=1)[:, :k]
        correct1 += int((top[:, 0] == labels).sum())
        correct5 += int((top == labels[:, None]).any(1).sum())
        loss_sum += float(-log_softmax(logits)[np.arange(len(labels)), labels].sum())
        count += len(labels)
        if progress is not None:
            progress.update(i, num_batches, f'{count} images')
    if progress is not None:
        progress.close()
    if sum_over_ranks:
        totals = SumOverRanks()(ms.Tensor([correct1, correct5, loss_sum, count], ms.float32)).asnumpy()
        correct1, correct5, count = (int(round(float(v))) for v in totals[[0, 1, 3]])
        loss_sum = float(totals[2])
    if count == 0:
        raise DataError('no image of the evaluation dataset could be read')
    return {'top1': correct1 / count, 'top5': correct5 / count, 'loss': loss_sum / count, 'count': count}
