"""The jitted training step: forward, loss, gradients and the optimizer update in one graph."""
import mindspore as ms
from mindspore import nn, ops
from mindspore.amp import all_finite

_square_sum = ops.MultitypeFuncGraph('square_sum')
_scale = ops.MultitypeFuncGraph('scale')
_hyper_map = ops.HyperMap()


@_square_sum.register('Tensor')
def _square_sum_fn(grad):
    return ops.square(grad.astype(ms.float32)).sum()


@_scale.register('Tensor', 'Tensor')
def _scale_fn(factor, grad):
    return grad * factor.astype(grad.dtype)


def clip_by_global_norm(grads, clip_norm):
    """Scale all of `grads` by clip_norm / max(global_norm, clip_norm), the global norm taken over
    all of them together: the semantics of ops.clip_by_global_norm, which 2.10 deprecates. Squares
    are summed in float32, so float16 gradients cannot overflow the norm. Mapped over the gradients
    with HyperMap: a Python loop over them would be unrolled into the graph node by node, and costs
    seconds of compilation per hundred parameters."""
    global_norm = ops.sqrt(ops.addn(_hyper_map(_square_sum, grads)))
    factor = clip_norm / ops.maximum(global_norm, clip_norm)
    return _hyper_map(ops.partial(_scale, factor), grads)


class AnyRank(nn.Cell):
    """flag (float32 scalar, 0 or 1) -> True on every rank when it is 1 on at least one. The flag
    travels as a float32 count summed over ranks: SUM is the reduction every backend (CPU msrun
    included) supports for float32."""

    def __init__(self):
        super().__init__()
        self.sum_over_ranks = ops.AllReduce(ops.ReduceOp.SUM)

    def construct(self, flag):
        return self.sum_over_ranks(flag) > 0.5


class AllRanksFinite(nn.Cell):
    """finite -> True on every rank exactly when `finite` is True on every rank.

    The local check can differ between ranks even after the gradient all-reduce: on Ascend in
    saturation mode all_finite reads the device's own float-status flag, not the gradients. A
    rank that skipped a step its peers applied would carry different weights from then on.
    """

    def __init__(self):
        super().__init__()
        self.any_rank = AnyRank()

    def construct(self, finite):
        return ops.logical_not(self.any_rank(ops.logical_not(finite).astype(ms.float32)))


def make_train_step(net, loss_fn, optimizer, loss_scaler=None, clip_grad=None, grad_reducer=None, jit_level='O0'):
    """Returns step(images, targets) -> (loss, overflow, loss_scale), compiled once (graph mode)
    on first call. All three are scalar Tensors:

    loss: the (unscaled) training loss of the batch.
    overflow: True when the gradients were not finite (on any rank, under data parallelism) and
        the update was skipped; always False without a loss scaler.
    loss_scale: the scale the next step will use, after this step's adjustment (1 without a loss
        scaler).

    loss_scaler: an ms.amp.DynamicLossScaler for mixed precision; a step whose gradients overflow
        is skipped and the scale is lowered (works on CPU, GPU and Ascend).
    clip_grad: clip gradients to this global norm (None = off).
    grad_reducer: e.g. nn.DistributedGradReducer for data-parallel training; the overflow
        decision is then reduced over the ranks too, so that all of them skip the same steps.
    jit_level: 'O0' (kernel by kernel, MindSpore's default) or 'O1' (with operator fusion).
    """
    def forward(images, targets):
        loss = loss_fn(net(images), targets)
        return loss if loss_scaler is None else loss_scaler.scale(loss)

    grad_fn = ms.value_and_grad(forward, None, optimizer.parameters)
    all_ranks_finite = AllRanksFinite() if grad_reducer is not None and loss_scaler is not None else None

    def update(grads):
        if clip_grad is not None:
            grads = clip_by_global_norm(grads, clip_grad)
        return optimizer(grads)

    @ms.jit(jit_level=jit_level)
    def step(images, targets):
        loss, grads = grad_fn(images, targets)
        if grad_reducer is not None:
            grads = grad_reducer(grads)
        if loss_scaler is None:
            update(grads)
            return loss, ops.zeros((), ms.bool_), ops.ones((), ms.float32)
        loss = loss_scaler.unscale(loss)
        grads = loss_scaler.unscale(grads)
        # Checked after the gradient all-reduce, then reduced itself: the order of
        # nn.TrainOneStepWithLossScaleCell.
        finite = all_finite(grads)
        if all_ranks_finite is not None:
            finite = all_ranks_finite(finite)
        if finite:
            update(grads)
        loss_scaler.adjust(finite)
        return loss, ops.logical_not(finite), loss_scaler.scale_value

    return step
