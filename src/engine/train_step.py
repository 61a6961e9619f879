"""The jitted training step: forward, loss, gradients and the optimizer update in one graph."""
import mindspore as ms


def make_train_step(net, loss_fn, optimizer, grad_reducer=None):
    """Returns step(images, labels) -> loss, compiled once (graph mode) on first call.

    grad_reducer: e.g. nn.DistributedGradReducer for data parallel training.
    """
    def forward(images, labels):
        return loss_fn(net(images), labels)

    grad_fn = ms.value_and_grad(forward, None, optimizer.parameters)

    @ms.jit
    def step(images, labels):
        loss, grads = grad_fn(images, labels)
        if grad_reducer is not None:
            grads = grad_reducer(grads)
        optimizer(grads)
        return loss

    return step
