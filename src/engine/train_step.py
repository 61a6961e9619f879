"""The jitted training step: forward, loss, gradients and the optimizer update in one graph, or, with
gradient accumulation, one graph per micro-batch and one for the update; weight EMA."""
import mindspore as ms
from mindspore import nn, ops
from mindspore.amp import all_finite

from ..models.weights import EMA_PREFIX

_square_sum = ops.MultitypeFuncGraph('square_sum')
_scale = ops.MultitypeFuncGraph('scale')
_hyper_map = ops.HyperMap()


@_square_sum.register('Tensor')
def _square_sum_fn(grad):
    return ops.square(grad.astype(ms.float32)).sum()


@_scale.register('Tensor', 'Tensor')
def _scale_fn(factor, grad):
    return grad * factor.astype(grad.dtype)


_accumulate = ops.MultitypeFuncGraph('accumulate')
_reset = ops.MultitypeFuncGraph('reset')
_ema_update = ops.MultitypeFuncGraph('ema_update')


@_accumulate.register('Tensor', 'Tensor')
def _accumulate_fn(total, grad):
    return ops.assign_add(total, grad.astype(total.dtype))


@_reset.register('Tensor')
def _reset_fn(total):
    return ops.assign(total, ops.zeros_like(total))


@_ema_update.register('Tensor', 'Tensor', 'Tensor')
def _ema_update_fn(decay, average, weight):
    return ops.assign(average, average * decay + (1.0 - decay) * weight.astype(average.dtype))


def clip_by_global_norm(grads, clip_norm):
    """Scale all of `grads` by min(1, clip_norm / (global_norm + 1e-6)), the global norm taken over
    all of them together: torch.nn.utils.clip_grad_norm_, which the official Swin recipe calls. Squares
    are summed in float32, so float16 gradients cannot overflow the norm. Mapped over the gradients
    with HyperMap: a Python loop over them would be unrolled into the graph node by node, and costs
    seconds of compilation per hundred parameters."""
    global_norm = ops.sqrt(ops.addn(_hyper_map(_square_sum, grads)))
    factor = clip_norm / ops.maximum(global_norm + 1e-6, clip_norm)  # exactly 1.0 when not clipped
    return _hyper_map(ops.partial(_scale, factor), grads)


class SumOverRanks(nn.Cell):
    """x (float32) -> its sum over all ranks, on every rank. Counts travel as float32 too: SUM is
    the reduction every backend (CPU msrun included) supports for float32, exact for integers
    below 2**24."""

    def __init__(self):
        super().__init__()
        self.all_reduce = ops.AllReduce(ops.ReduceOp.SUM)

    def construct(self, x):
        return self.all_reduce(x)


class AnyRank(nn.Cell):
    """flag (float32 scalar, 0 or 1) -> True on every rank when it is 1 on at least one."""

    def __init__(self):
        super().__init__()
        self.sum_over_ranks = SumOverRanks()

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


class WeightEMA(nn.Cell):
    """An exponential moving average of a network's floating-point parameters (trainable weights and
    BatchNorm statistics, as timm's ModelEmaV2 averages the whole state), kept in the parameters of
    `average_net`, a second instance of the same model whose parameter names carry the prefix
    EMA_PREFIX: it is evaluated as it is, and saved beside the weights. Called with `applied` (bool
    scalar) after each update: average <- decay * average + (1 - decay) * weight if it was applied,
    else the decay is 1 and the average stays exactly as it was.
    """

    def __init__(self, net, average_net, decay):
        super().__init__()
        weights = {p.name: p for p in net.get_parameters() if p.dtype in FLOAT_TYPES}
        averages = {p.name[len(EMA_PREFIX):]: p for p in average_net.get_parameters() if p.dtype in FLOAT_TYPES}
        if sorted(weights) != sorted(averages):
            raise ValueError('average_net is not an EMA_PREFIX-renamed copy of net: '
                             f'{sorted(set(weights) ^ set(averages))[:5]}')
        names = sorted(weights)
        self.weights = ms.ParameterTuple([weights[n] for n in names])
        self.averages = ms.ParameterTuple([averages[n] for n in names])
        self.decay = ms.Tensor(decay, ms.float32)

    def start_from_weights(self):
        """average <- weight (a new run starts its average at the initial weights)."""
        for average, weight in zip(self.averages, self.weights):
            average.set_data(weight.data.copy())

    def construct(self, applied):
        decay = ops.select(applied, self.decay, ops.ones((), ms.float32))
        return _hyper_map(ops.partial(_ema_update, decay), self.averages, self.weights)


FLOAT_TYPES = (ms.float16, ms.float32, ms.bfloat16, ms.float64)


def make_train_step(net, loss_fn, optimizer, loss_scaler=None, clip_grad=None, grad_reducer=None, jit_level='O0',
                    accumulation_steps=1, ema=None):
    """Returns step(batches) -> (loss, overflow, loss_scale): one optimizer update from
    `accumulation_steps` micro-batches, `batches` a sequence of that many (images, targets). Compiled
    once (graph mode) on first call. The three outputs are scalar Tensors, left on the device (read
    them with .asnumpy() only when needed: each read waits for the device):

    loss: the (unscaled) training loss, the mean over the micro-batches.
    overflow: True when the gradients were not finite (on any rank, under data parallelism; in any
        micro-batch of the update) and the update was skipped; always False without a loss scaler.
    loss_scale: the scale the next update will use, after this one's adjustment (1 without a loss
        scaler).

    loss_scaler: an ms.amp.DynamicLossScaler for mixed precision; an update whose gradients
        overflow is skipped and the scale is lowered (works on CPU, GPU and Ascend).
    clip_grad: clip gradients to this global norm (None = off).
    grad_reducer: e.g. nn.DistributedGradReducer for data-parallel training; the overflow
        decision is then reduced over the ranks too, so that all of them skip the same updates.
    jit_level: 'O0' (kernel by kernel, MindSpore's default) or 'O1' (with operator fusion).
    accumulation_steps: micro-batches per update. Above 1, one graph per micro-batch adds its
        gradients to a float32 buffer (one more copy of the trainable weights' size) and a second graph
        applies their mean: the update of one batch of all the micro-batches' images, up to fp32
        rounding. The all-reduce, clipping, overflow decision and loss-scale adjustment run once per
        update.
    ema: a WeightEMA, updated after each applied update (in a graph of its own, run after the step's).
    """
    if accumulation_steps < 1:
        raise ValueError(f'accumulation_steps must be at least 1, got {accumulation_steps}')

    def forward(images, targets):
        loss = loss_fn(net(images), targets)
        return loss if loss_scaler is None else loss_scaler.scale(loss)

    grad_fn = ms.value_and_grad(forward, None, optimizer.parameters)
    all_ranks_finite = AllRanksFinite() if grad_reducer is not None and loss_scaler is not None else None

    def apply(loss, grads, finite):
        """The update from the (scaled, summed over ranks) gradients; finite: of every micro-batch."""
        if grad_reducer is not None:
            grads = grad_reducer(grads)
        if loss_scaler is None:
            update(grads)
            return loss, ops.zeros((), ms.bool_), ops.ones((), ms.float32)
        loss = loss_scaler.unscale(loss)
        grads = loss_scaler.unscale(grads)
        # Checked after the gradient all-reduce, then reduced itself: the order of
        # nn.TrainOneStepWithLossScaleCell.
        finite = ops.logical_and(finite, all_finite(grads))
        if all_ranks_finite is not None:
            finite = all_ranks_finite(finite)
        if finite:
            update(grads)
        else:
            # The learning rate follows the training steps, a skipped one included, as the official
            # loops call their scheduler every iteration: the optimizer, which advances global_step
            # when it updates, did not run.
            ops.assign_add(optimizer.global_step, optimizer.global_step_increase_tensor)
        loss_scaler.adjust(finite)
        return loss, ops.logical_not(finite), loss_scaler.scale_value

    def update(grads):
        if clip_grad is not None:
            grads = clip_by_global_norm(grads, clip_grad)
        optimizer(grads)

    if ema is not None:
        # A graph of its own: in the step's graph the weights, read before the optimizer's in-place
        # update and again after it, would each get a copy (a TensorMove node, which has no API page
        # to check its platforms against).
        @ms.jit(jit_level=jit_level)
        def update_average(skipped):
            return ema(ops.logical_not(skipped))

    def with_average(step):
        if ema is None:
            return step

        def step_and_average(batches):
            outputs = step(batches)
            # None when graphs are compiled and not run (MS_DEV_PRECOMPILE_ONLY, as the graph audit does)
            update_average(ops.zeros((), ms.bool_) if outputs is None else outputs[1])
            return outputs
        return step_and_average

    if accumulation_steps == 1:
        @ms.jit(jit_level=jit_level)
        def single_step(images, targets):
            loss, grads = grad_fn(images, targets)
            return apply(loss, grads, ops.ones((), ms.bool_))

        def step(batches):
            (images, targets), = batches
            return single_step(images, targets)
        return with_average(step)

    totals = optimizer.parameters.clone('accumulated', init='zeros')
    # Loss and finiteness of the window so far. All-finite is checked per micro-batch as well: on
    # Ascend in saturation mode all_finite reads the device's float-status flag, which only sees the
    # kernels since the last check, not an overflow inside an earlier micro-batch.
    loss_total = ms.Parameter(ms.Tensor(0.0, ms.float32), name='accumulated_loss', requires_grad=False)
    window_finite = ms.Parameter(ms.Tensor(True, ms.bool_), name='accumulated_finite', requires_grad=False)
    mean_factor = ms.Tensor(1.0 / accumulation_steps, ms.float32)

    @ms.jit(jit_level=jit_level)
    def accumulate(images, targets):
        loss, grads = grad_fn(images, targets)
        if loss_scaler is not None:
            ops.assign(window_finite, ops.logical_and(window_finite, all_finite(grads)))
        _hyper_map(_accumulate, totals, grads)
        ops.assign_add(loss_total, loss.astype(ms.float32))
        return loss

    @ms.jit(jit_level=jit_level)
    def apply_accumulated():
        grads = _hyper_map(ops.partial(_scale, mean_factor), totals)
        outputs = apply(loss_total * mean_factor, grads, window_finite)
        _hyper_map(_reset, totals)
        ops.assign(loss_total, ops.zeros((), ms.float32))
        ops.assign(window_finite, ops.ones((), ms.bool_))
        return outputs

    def step(batches):
        if len(batches) != accumulation_steps:
            raise ValueError(f'an update takes {accumulation_steps} micro-batches, got {len(batches)}')
        for images, targets in batches:
            accumulate(images, targets)
        return apply_accumulated()
    return with_average(step)
