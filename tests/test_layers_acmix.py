"""The ResNet ACmix layer against a NumPy reference written from the paper's equations and the
official numerics (reflection padding, q-only scaling, head-major split, d*9+j conv channels), and
its gradients against autodiff of the plain formulation; every test in both formulations."""
import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, nn, ops

from src.layers import LocalAttentionACmix, shift_kernels


def _p(cell, name):
    return cell.parameters_dict()[name].asnumpy() if name in cell.parameters_dict() else None


def reference_acmix(layer, x):
    """ACmix forward in NumPy, one output position at a time."""
    prm = {p.name: p.asnumpy() for p in layer.get_parameters()}
    b, _, h, w = x.shape
    head, hd, ka, kc = layer.head, layer.head_dim, layer.kernel_att, layer.kernel_conv
    s, dil = layer.stride, layer.dilation

    def conv1x1(name, t):
        wt, bias = prm[name + '.weight'][:, :, 0, 0], prm.get(name + '.bias')
        out = np.einsum('oc,bchw->bohw', wt, t)
        return out if bias is None else out + bias[None, :, None, None]

    q, k, v = conv1x1('conv1', x), conv1x1('conv2', x), conv1x1('conv3', x)
    h_out, w_out = -(-h // s), -(-w // s)
    outs = []
    if layer.use_att:
        grid = np.stack([np.tile(np.linspace(-1, 1, w), (h, 1)), np.tile(np.linspace(-1, 1, h)[:, None], (1, w))])
        pe = conv1x1('conv_p', grid[None].astype(np.float32))[0]  # (hd, h, w)
        pad = (dil * (ka - 1) + 1) // 2

        def padf(t):
            return np.pad(t, [(0, 0)] * (t.ndim - 2) + [(pad, pad), (pad, pad)], mode='reflect')
        kp, vp, pep = padf(k.reshape(b, head, hd, h, w)), padf(v.reshape(b, head, hd, h, w)), padf(pe)
        qs = q.reshape(b, head, hd, h, w) * hd ** -0.5
        out = np.zeros((b, head, hd, h_out, w_out))
        for i in range(h_out):
            for j in range(w_out):
                ys = [i * s + a * dil for a in range(ka)]
                xs = [j * s + c * dil for c in range(ka)]
                kw = kp[:, :, :, ys][:, :, :, :, xs].reshape(b, head, hd, ka * ka)
                vw = vp[:, :, :, ys][:, :, :, :, xs].reshape(b, head, hd, ka * ka)
                pw = pep[:, ys][:, :, xs].reshape(hd, ka * ka)
                qc = qs[:, :, :, i * s, j * s]  # (b, head, hd)
                logit = np.einsum('bnd,bndj->bnj', qc, kw + pe[:, i * s, j * s][:, None] - pw)
                att = np.exp(logit - logit.max(-1, keepdims=True))
                att /= att.sum(-1, keepdims=True)
                out[:, :, :, i, j] = np.einsum('bnj,bndj->bnd', att, vw)
        outs.append(out.reshape(b, -1, h_out, w_out))
    if layer.use_conv:
        qkv = np.concatenate([t.reshape(b, head, hd, h * w) for t in (q, k, v)], 1)
        f = np.einsum('jc,bcdp->bjdp', prm['fc.weight'][:, :, 0, 0], qkv)
        f = f.transpose(0, 2, 1, 3).reshape(b, hd * kc * kc, h, w)
        wt = prm['dep_conv.weight']  # (out, kc*kc, kc, kc), group = out // (out // hd)
        cp = dil * (kc // 2)
        fp = np.pad(f, [(0, 0), (0, 0), (cp, cp), (cp, cp)])
        opg = layer.out_planes // hd
        out = np.zeros((b, layer.out_planes, h_out, w_out))
        for o in range(layer.out_planes):
            g = o // opg
            src = fp[:, g * kc * kc:(g + 1) * kc * kc]
            for a in range(kc):
                for c in range(kc):
                    patch = src[:, :, a * dil: a * dil + s * (h_out - 1) + 1: s,
                                c * dil: c * dil + s * (w_out - 1) + 1: s]
                    out[:, o] += np.einsum('i,bihw->bhw', wt[o, :, a, c], patch)
        outs.append(out)
    if len(outs) == 2:
        return prm['rate1'][0] * outs[0] + prm['rate2'][0] * outs[1]
    return outs[0]


def _randomise(layer, seed=0):
    rng = np.random.default_rng(seed)
    for p in layer.get_parameters():
        if p.name in ('rate1', 'rate2'):
            p.set_data(Tensor(rng.uniform(0.3, 1.5, p.shape).astype(np.float32)))
        elif p.name.endswith('bias') or p.name.startswith('conv_p'):
            p.set_data(Tensor(rng.normal(0, 1.0, p.shape).astype(np.float32)))
        elif p.name == 'dep_conv.weight':
            p.set_data(Tensor((p.asnumpy() + rng.normal(0, 0.3, p.shape)).astype(np.float32)))


@pytest.mark.parametrize('stride,h,w,paths,dilation,kc', [
    (1, 9, 10, 'both', 1, 3),
    (2, 10, 12, 'both', 1, 3),
    (2, 9, 11, 'both', 1, 3),      # odd sizes at stride 2: the official code crashes here
    (1, 14, 14, 'both', 2, 3),     # dilated window: the official code crashes here
    (1, 8, 8, 'both', 1, 5),       # kernel_conv 5: the official code crashes here
    (1, 8, 9, 'attention', 1, 3),
    (2, 8, 9, 'conv', 1, 3),
])
def test_acmix_matches_numpy_reference(stride, h, w, paths, dilation, kc, formulation):
    layer = LocalAttentionACmix(6, 8, kernel_att=7, head=2, kernel_conv=kc, stride=stride,
                                dilation=dilation, paths=paths, formulation=formulation)
    _randomise(layer)
    x = np.random.default_rng(1).normal(size=(2, 6, h, w)).astype(np.float32)
    got = layer(Tensor(x)).asnumpy()
    want = reference_acmix(layer, x.astype(np.float64))
    assert got.shape == want.shape == (2, 8, -(-h // stride), -(-w // stride))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_shift_kernels_are_shifts():
    k = shift_kernels(4, 3)
    assert k.shape == (4, 9, 3, 3)
    for i in range(9):
        assert k[2, i, i // 3, i % 3] == 1 and k[2, i].sum() == 1


def test_fixed_shift_is_not_trainable():
    layer = LocalAttentionACmix(8, 8, head=2, learnable_shift=False)
    names = [p.name for p in layer.trainable_params()]
    assert 'dep_conv.weight' not in names and 'rate1' in names


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match='kernel_conv'):
        LocalAttentionACmix(8, 8, kernel_conv=4)
    with pytest.raises(ValueError, match='divisible'):
        LocalAttentionACmix(8, 10, head=4)
    with pytest.raises(ValueError, match='paths'):
        LocalAttentionACmix(8, 8, paths='mix')


def test_fp16_forward_runs(formulation):
    layer = LocalAttentionACmix(8, 8, head=2, stride=2, formulation=formulation)
    layer.to_float(ms.float16)
    x = Tensor(np.random.randn(1, 8, 8, 8).astype(np.float16))
    out = layer(x)
    assert out.shape == (1, 8, 4, 4) and np.isfinite(out.asnumpy()).all()


def _unfold_attention(layer, q, k, v):
    """The attention path written plainly: all kernel_att**2 neighbours unfolded at once and
    gradients from autodiff. The reference for the layer's hand-written backward."""
    b, c, h, w = q.shape
    bh, hd, s, ka = b * layer.head, layer.head_dim, layer.stride, layer.kernel_att
    h_out, w_out = -(-h // s), -(-w // s)
    length = h_out * w_out
    pad = nn.ReflectionPad2d((layer.dilation * (ka - 1) + 1) // 2)

    def neighbours(t):  # (n, hd, h, w) -> (n, hd, ka*ka, h_out*w_out)
        cols = ops.unfold(pad(t), ka, layer.dilation, 0, s)
        return cols.view(t.shape[0], hd, ka * ka, length)

    pe = layer._position_encoding(h, w, q.dtype)  # (1, hd, h, w)
    qs = (q.view(b, layer.head, hd, h, w) * hd ** -0.5)[:, :, :, ::s, ::s].reshape(bh, hd, 1, length)
    pe_c = ops.tile(pe[:, :, ::s, ::s].reshape(1, hd, 1, length), (bh, 1, 1, 1))
    pe_nbr = ops.tile(neighbours(pe), (bh, 1, 1, 1))
    k_nbr, v_nbr = neighbours(k.view(bh, hd, h, w)), neighbours(v.view(bh, hd, h, w))
    att = ops.softmax((qs * (k_nbr + pe_c - pe_nbr)).sum(1, keepdims=True), axis=2)
    return (att * v_nbr).sum(2).view(b, c, h_out, w_out)


def _grouped_conv_path(layer, q, k, v):
    """The convolution path as the official code writes it: fc, then dep_conv as a grouped conv."""
    b, c, h, w = q.shape
    qkv = ops.cat([t.view(b, layer.head, layer.head_dim, h * w) for t in (q, k, v)], 1)
    f = ops.transpose(layer.fc(qkv), (0, 2, 1, 3)).reshape(b, -1, h, w)
    return layer.dep_conv(f)


def _plain_acmix(layer, x):
    q, k, v = layer.conv1(x), layer.conv2(x), layer.conv3(x)
    if layer.use_att and layer.use_conv:
        return layer.rate1 * _unfold_attention(layer, q, k, v) + layer.rate2 * _grouped_conv_path(layer, q, k, v)
    if layer.use_att:
        return _unfold_attention(layer, q, k, v)
    return _grouped_conv_path(layer, q, k, v)


def _layer_forward(layer, x):
    return layer(x)


def _grads(layer, x, forward):
    params = layer.trainable_params()
    shape = forward(layer, x).shape
    cot = Tensor(np.random.default_rng(5).normal(size=shape).astype(ms.dtype_to_nptype(x.dtype)))

    def loss(inp):
        return (forward(layer, inp) * cot).sum()

    grad_fn = ms.jit(ms.grad(loss, grad_position=0, weights=params))
    dx, dparams = grad_fn(x)
    return [dx.asnumpy().astype(np.float64)] + [g.asnumpy().astype(np.float64) for g in dparams]


# The attention-only shapes are left out of the inner loop (scripts/run_tests.sh --fast; CI runs them):
# 'both' runs the attention path at stride 1 and 2.
@pytest.mark.parametrize('stride,h,w,paths,dilation', [
    (1, 9, 10, 'both', 1),
    (2, 10, 12, 'both', 1),
    pytest.param(2, 9, 11, 'attention', 1, marks=pytest.mark.slow),    # odd sizes at stride 2
    pytest.param(1, 15, 13, 'attention', 1, marks=pytest.mark.slow),   # block sizes that do not divide the output
    pytest.param(1, 14, 14, 'attention', 2, marks=pytest.mark.slow),   # dilated window
    (2, 9, 8, 'conv', 1),
    (1, 10, 10, 'conv', 2),
])
def test_acmix_gradients_match_autodiff_of_the_plain_formulation(stride, h, w, paths, dilation, formulation):
    """Against unfold-everything attention and the grouped Conv2d, both differentiated by autodiff."""
    layer = LocalAttentionACmix(6, 8, kernel_att=7, head=2, stride=stride, dilation=dilation, paths=paths,
                                formulation=formulation)
    _randomise(layer)
    x = Tensor(np.random.default_rng(1).normal(size=(2, 6, h, w)).astype(np.float32))
    np.testing.assert_allclose(layer(x).asnumpy(), _plain_acmix(layer, x).asnumpy(), rtol=1e-4, atol=1e-5)
    got, want = _grads(layer, x, _layer_forward), _grads(layer, x, _plain_acmix)
    names = ['x'] + [p.name for p in layer.trainable_params()]
    for name, g, r in zip(names, got, want):
        # conv_p.bias has a zero gradient (pe_centre - pe_neighbour cancels it): absolute floor.
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=max(1e-4 * np.abs(r).max(), 1e-5), err_msg=name)


def test_fp16_backward_runs_and_agrees_with_fp32(formulation):
    """The backward in fp16 (O2-style mixed precision) against fp32."""
    layer = LocalAttentionACmix(8, 8, head=2, stride=2, formulation=formulation)
    _randomise(layer)
    x = np.random.default_rng(1).normal(size=(2, 8, 10, 10)).astype(np.float32)
    want = _grads(layer, Tensor(x), _layer_forward)[0]
    layer.to_float(ms.float16)
    got = _grads(layer, Tensor(x.astype(np.float16)), _layer_forward)[0]
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, want, atol=2e-2 * np.abs(want).max())


def test_formulation_follows_the_device_the_environment_and_the_argument(monkeypatch):
    from src.layers import LocalAttention, WindowAttentionACmix
    from src.layers.cpu.local_attention import BlockedLocalAttention
    from src.models import create_model
    monkeypatch.delenv('ACMIX_FORMULATION', raising=False)
    assert isinstance(LocalAttentionACmix(8, 8, head=2).attention, BlockedLocalAttention)  # CPU device: cpu
    monkeypatch.setenv('ACMIX_FORMULATION', 'portable')  # read when a layer is built
    assert isinstance(LocalAttentionACmix(8, 8, head=2).attention, LocalAttention)
    assert WindowAttentionACmix(8, 4, 2).formulation.name == 'portable'
    assert isinstance(LocalAttentionACmix(8, 8, head=2, formulation='cpu').attention, BlockedLocalAttention)
    monkeypatch.setenv('ACMIX_FORMULATION', 'fast')
    with pytest.raises(ValueError, match='ACMIX_FORMULATION must be one of portable, cpu'):
        LocalAttentionACmix(8, 8, head=2)
    with pytest.raises(ValueError, match='formulation must be one of'):
        LocalAttentionACmix(8, 8, head=2, formulation='gpu')
    monkeypatch.delenv('ACMIX_FORMULATION')
    # Both formulations hold the same parameters: one checkpoint loads into either.
    for arch, kwargs in (('acmix_resnet_mini', {}), ('acmix_swin_mini', {'img_size': 32})):
        names = [[(p.name, p.shape) for p in create_model(arch, formulation=f, **kwargs).get_parameters()]
                 for f in ('cpu', 'portable')]
        assert names[0] == names[1]
