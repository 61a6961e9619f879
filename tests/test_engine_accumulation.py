"""Gradient accumulation and weight EMA in the training step (src/engine/train_step.py)."""
import os

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, nn

from src.engine.train_step import EMA_PREFIX, WeightEMA, make_train_step


def _dense(seed=3):
    rng = np.random.default_rng(seed)
    net = nn.Dense(4, 3)
    for param in net.trainable_params():
        param.set_data(Tensor(rng.normal(size=param.shape).astype(np.float32)))
    return net


def _batch(rng, n=8):
    return (Tensor(rng.normal(size=(n, 4)).astype(np.float32)), Tensor((np.arange(n) % 3).astype(np.int32)))


def _weights(net):
    return [p.asnumpy().copy() for p in net.trainable_params()]


def _train(accumulation_steps, updates=3, loss_scale=None, poison=None):
    """Weights and losses after `updates` AdamW updates of batch 8, split into accumulation_steps
    micro-batches. poison: (update, micro-batch) whose images are made infinite."""
    net = _dense()
    opt = nn.AdamWeightDecay(net.trainable_params(), learning_rate=0.05, weight_decay=0.01)
    scaler = None if loss_scale is None else ms.amp.DynamicLossScaler(loss_scale, 2, 1000)
    step = make_train_step(net, nn.CrossEntropyLoss(), opt, scaler, accumulation_steps=accumulation_steps)
    rng = np.random.default_rng(0)
    losses, overflows = [], []
    for u in range(updates):
        images, labels = _batch(rng)
        size = 8 // accumulation_steps
        batches = [(images[m * size:(m + 1) * size], labels[m * size:(m + 1) * size])
                   for m in range(accumulation_steps)]
        if poison is not None and poison[0] == u:
            m = poison[1]
            batches[m] = (batches[m][0] * np.float32(np.inf), batches[m][1])
        loss, overflow, scale = step(batches)
        losses.append(float(loss.asnumpy()))
        overflows.append(bool(overflow.asnumpy()))
    return _weights(net), losses, overflows, float(scale.asnumpy())


@pytest.mark.parametrize('loss_scale', [None, 2.0 ** 8])
def test_accumulated_micro_batches_give_the_whole_batch_update(loss_scale):
    # fp32 rounding only: the mean of two micro-batch mean gradients vs one mean over 8 rows, then 3
    # AdamW updates (whose normalisation by sqrt(v) amplifies relative differences of tiny gradients)
    whole, whole_losses, _, _ = _train(1, loss_scale=loss_scale)
    for steps in (2, 4):
        split, split_losses, overflows, _ = _train(steps, loss_scale=loss_scale)
        assert not any(overflows)
        np.testing.assert_allclose(split_losses, whole_losses, rtol=1e-6)
        for a, b in zip(split, whole):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    moved = max(np.abs(a - b).max() for a, b in zip(whole, _weights(_dense())))
    assert moved > 1e-2  # the updates did change the weights


def test_an_overflow_in_any_micro_batch_skips_the_whole_update():
    clean, _, _, _ = _train(2, updates=1, loss_scale=2.0 ** 8)
    for micro in (0, 1):
        weights, losses, overflows, scale = _train(2, updates=1, loss_scale=2.0 ** 8, poison=(0, micro))
        assert overflows == [True] and scale == 2.0 ** 7 and not np.isfinite(losses[0])
        for w, w0 in zip(weights, _weights(_dense())):
            np.testing.assert_array_equal(w, w0)
    # the window's buffers were emptied: the next update is the clean one from the current weights
    weights, _, overflows, _ = _train(2, updates=2, loss_scale=2.0 ** 8, poison=(0, 1))
    assert overflows == [True, False]
    assert not all(np.array_equal(a, b) for a, b in zip(weights, clean))  # a different batch, applied


def test_weight_ema_follows_the_recurrence():
    decay = 0.75
    net, average_net = _dense(), _dense(seed=9)
    average_net.update_parameters_name(EMA_PREFIX)
    ema = WeightEMA(net, average_net, decay)
    ema.start_from_weights()
    expected = _weights(net)
    opt = nn.SGD(net.trainable_params(), learning_rate=0.5)
    step = make_train_step(net, nn.CrossEntropyLoss(), opt, ema=ema, accumulation_steps=2)
    rng = np.random.default_rng(1)
    for _ in range(3):
        images, labels = _batch(rng)
        step([(images[:4], labels[:4]), (images[4:], labels[4:])])
        expected = [e * np.float32(decay) + np.float32(1 - decay) * w for e, w in zip(expected, _weights(net))]
    assert [p.name for p in average_net.trainable_params()] == [EMA_PREFIX + p.name for p in net.trainable_params()]
    for got, want in zip(_weights(average_net), expected):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    assert not np.allclose(_weights(average_net)[0], _weights(net)[0])


def test_a_skipped_update_leaves_the_average_as_it_was():
    net, average_net = _dense(), _dense(seed=9)
    average_net.update_parameters_name(EMA_PREFIX)
    ema = WeightEMA(net, average_net, 0.5)
    before = _weights(average_net)
    opt = nn.SGD(net.trainable_params(), learning_rate=0.5)
    step = make_train_step(net, nn.CrossEntropyLoss(), opt, ms.amp.DynamicLossScaler(2.0 ** 8, 2, 1000),
                           ema=ema, accumulation_steps=2)
    images, labels = _batch(np.random.default_rng(2))
    _, overflow, _ = step([(images[:4] * np.float32(np.inf), labels[:4]), (images[4:], labels[4:])])
    assert bool(overflow.asnumpy())
    for got, want in zip(_weights(average_net), before):
        np.testing.assert_array_equal(got, want)
    _, overflow, _ = step([(images[:4], labels[:4]), (images[4:], labels[4:])])
    assert not bool(overflow.asnumpy())
    assert not np.array_equal(_weights(average_net)[0], before[0])


def _saved_weights(output_dir, epoch):
    from src.models.weights import read_checkpoint
    params = read_checkpoint(os.path.join(output_dir, 'checkpoints', f'epoch_{epoch:03d}.ckpt'))
    return {k: v.asnumpy() for k, v in params.items() if not k.startswith(('optimizer.', 'meta.', 'ema.'))}


@pytest.mark.slow
def test_training_with_accumulation_equals_the_whole_batch(tiny_imagefolder, tmp_path):
    """swin_mini has no BatchNorm (whose statistics are per micro-batch) and, with drop_path_rate 0,
    no randomness in the step; without mixup, flips or label smoothing, and with the crop's random
    draws made per image in the same image order, both runs see the same images in every update."""
    from conftest import tiny_config
    from src.engine.trainer import train
    runs = {}
    for batch_size, steps in ((8, 1), (4, 2)):
        out = tmp_path / f'b{batch_size}_a{steps}'
        history = train(tiny_config(tiny_imagefolder, out, arch='swin_mini', drop_path_rate=0.0, batch_size=batch_size,
                                    accumulation_steps=steps, optimizer='sgd', lr=0.05, lr_base_batch=8,
                                    weight_decay=1e-4, eval_interval=0, epochs=2))
        assert [r['global_batch'] for r in history] == [8, 8]
        runs[steps] = (_saved_weights(out, 2), [r['train_loss'] for r in history])
    (whole, whole_losses), (split, split_losses) = runs[1], runs[2]
    assert sorted(whole) == sorted(split)
    np.testing.assert_allclose(split_losses, whole_losses, rtol=1e-5)
    # 6 SGD-momentum updates: the two summation orders of the gradient differ by fp32 rounding, which
    # SGD carries on linearly (seen: 1.2e-7 at most, an ulp of the largest weights). AdamW is not used
    # here: dividing near-zero gradients by their own root mean square turns rounding into
    # differences of the order of the lr.
    worst = max(np.abs(split[n] - whole[n]).max() for n in whole)
    print(f'largest weight difference {worst:.2e}')
    for name in whole:
        np.testing.assert_allclose(split[name], whole[name], rtol=1e-5, atol=1e-6, err_msg=name)
    # the second epoch's updates moved the weights by far more than the tolerance
    after_one = _saved_weights(tmp_path / 'b8_a1', 1)
    assert max(np.abs(whole[n] - after_one[n]).max() for n in whole) > 1e-3


def _eval_command(data_dir, checkpoint, *extra):
    import sys
    return [sys.executable, 'eval.py', '--arch', 'resnet_mini', '--num_classes', '3', '--image_size', '32',
            '--crop_pct', '1.0', '--num_workers', '1', '--data_dir', str(data_dir), '--checkpoint', str(checkpoint),
            *extra]


@pytest.mark.slow
def test_ema_weights_are_saved_validated_and_used_on_request(tiny_imagefolder, tmp_path):
    import json
    import subprocess

    from conftest import assert_bad_input, tiny_config
    from src.engine.trainer import train
    from src.models import build_model
    from src.models.weights import load_weights, read_checkpoint
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cfg = tiny_config(tiny_imagefolder, tmp_path, ema=True, ema_decay=0.5, epochs=1, eval_interval=1)
    record, = train(cfg)
    assert {'val_top1', 'ema_val_top1', 'ema_val_top5', 'ema_val_loss'} <= set(record)
    checkpoint = tmp_path / 'checkpoints' / 'epoch_001.ckpt'
    saved = {k: v.asnumpy() for k, v in read_checkpoint(str(checkpoint)).items()}
    net = load_weights(build_model(cfg), str(checkpoint), use_ema=True)
    for p in net.get_parameters():
        np.testing.assert_array_equal(p.asnumpy(), saved[EMA_PREFIX + p.name], err_msg=p.name)
    assert any(not np.array_equal(saved[n], saved[EMA_PREFIX + n]) for n in saved if EMA_PREFIX + n in saved)

    run = subprocess.run(_eval_command(tiny_imagefolder, checkpoint, '--use_ema', 'true'), cwd=root,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result['use_ema'] is True and result['count'] == 12
    assert result['top1'] == record['ema_val_top1']  # the same weights, images and transforms as validation

    plain = tmp_path / 'plain.ckpt'
    ms.save_checkpoint(build_model(cfg), str(plain))
    official = tmp_path / 'official.pth'
    official.write_bytes(b'')
    for path, message in ((plain, 'has no EMA weights'), (official, '--use_ema needs a .ckpt')):
        run = subprocess.run(_eval_command(tiny_imagefolder, path, '--use_ema', 'true'), cwd=root,
                             capture_output=True, text=True, timeout=300)
        assert_bad_input(run.returncode, run.stderr)
        assert message in run.stderr, run.stderr
