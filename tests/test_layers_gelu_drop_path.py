"""The table-free GELU and DropPath against the forms they replace: nn.GELU(approximate=False)
bit for bit, values and gradients; DropPath's per-sample mask and scale in both formulations."""
import mindspore as ms
import numpy as np
from mindspore import Tensor, nn

from src.layers import GELU, resolve_formulation


def _value_and_grad(cell, x, cot):
    """cell(x) and the gradient of sum(cell(x) * cot), from one compiled graph (one random mask)."""
    def loss(inp):
        out = cell(inp)
        return (out * cot).sum(), out
    (_, out), dx = ms.jit(ms.value_and_grad(loss, has_aux=True))(x)
    return out.asnumpy(), dx.asnumpy()


def test_gelu_is_bit_identical_to_the_exact_nn_gelu():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 3, 4000), [0.0, -0.0, 1e-30, -8.5, 8.5, 40.0, -40.0]]).astype(np.float32)
    cot = Tensor(rng.normal(size=x.shape).astype(np.float32))
    got = _value_and_grad(GELU(), Tensor(x), cot)
    want = _value_and_grad(nn.GELU(approximate=False), Tensor(x), cot)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


def test_drop_path_drops_whole_samples_and_scales_the_kept_ones(formulation):
    rng = np.random.default_rng(0)
    dp = resolve_formulation(formulation).drop_path(0.3)
    x = rng.normal(size=(64, 5, 3)).astype(np.float32)
    cot = rng.normal(size=x.shape).astype(np.float32)
    dp.set_train(True)
    y, dx = _value_and_grad(dp, Tensor(x), Tensor(cot))
    keep = np.float32(0.7)
    dropped = (y == 0).all(axis=(1, 2))
    assert 0 < dropped.sum() < 64
    # a kept sample is x / keep exactly (one IEEE division, the mask multiplies by 1), and so is
    # its gradient, cot / keep; a dropped one has none
    np.testing.assert_array_equal(y[~dropped], x[~dropped] / keep)
    np.testing.assert_array_equal(dx[~dropped], cot[~dropped] / keep)
    assert (dx[dropped] == 0).all()
    dp.set_train(False)
    np.testing.assert_array_equal(dp(Tensor(x)).asnumpy(), x)


def test_drop_path_mask_form_follows_the_formulation(formulation):
    assert resolve_formulation(formulation).drop_path(0.1).mask_by_matmul == (formulation == 'cpu')
    assert isinstance(resolve_formulation(formulation).drop_path(0.0), nn.Identity)
