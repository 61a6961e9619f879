"""The jitted training step: forward, loss, gradients and the optimizer update in one graph."""
import mindspore as ms
from mindspore import ops
from mindspore.amp import all_finite


def make_train_step(net, loss_fn, optimizer, loss_scaler=None, clip_grad=None, grad_reducer=None):
    """Returns step(images, targets) -> loss, compiled once (graph mode) on first call.

    loss_scaler: an ms.amp.DynamicLossScaler for mixed precision; steps whose gradients overflow
        are skipped and the scale is lowered (works on CPU, GPU and Ascend).
    clip_grad: clip gradients to this global norm (None = off).
    grad_reducer: e.g. nn.DistributedGradReducer for data-parallel training.
    """
    def forward(images, targets):
        loss = loss_fn(net(images), targets)
        return loss if loss_scaler is None else loss_scaler.scale(loss)

    grad_fn = ms.value_and_grad(forward, None, optimizer.parameters)

    def update(grads):
        if clip_grad is not None:
            grads = ops.clip_by_global_norm(grads, clip_grad)
        return optimizer(grads)

    @ms.jit
    def step(images, targets):
        loss, grads = grad_fn(images, targets)
        if grad_reducer is not None:
            grads = grad_reducer(grads)
        if loss_scaler is None:
            update(grads)
            return loss
        loss = loss_scaler.unscale(loss)
        grads = loss_scaler.unscale(grads)
        finite = all_finite(grads)
        if finite:
            update(grads)
        loss_scaler.adjust(finite)
        return loss

    return step
