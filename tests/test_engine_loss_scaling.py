"""Mixed precision with dynamic loss scaling: overflowing steps are skipped, counted and reported,
a run that only skips stops with an error, resume continues with the saved scale; gradient
clipping by global norm without the deprecated MindSpore call; and the float32 islands of amp O2
(attention softmax, LayerNorm, loss), as apex O1 keeps them in the official training."""
import glob
import json
import os
import re
import shutil
import subprocess
import sys

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, nn

import train as train_script
from conftest import tiny_config
from src.cli import run_main
from src.config import ConfigError
from src.engine.checkpoint import load_training_checkpoint, read_training_checkpoint, split_training_checkpoint
from src.engine.train_step import clip_by_global_norm, make_train_step
from src.engine.trainer import train
from src.models import build_model
from src.tools import audit_graph

# fp16 gradients of resnet_mini on the tiny set overflow at this scale, not at a few halvings below it.
OVERFLOWING_SCALE = 2.0 ** 20


@pytest.mark.parametrize('clip_norm', [0.5, 100.0])
def test_clip_by_global_norm_matches_numpy(clip_norm):
    rng = np.random.default_rng(1)
    grads = [np.asarray(rng.normal(size=shape), np.float32) for shape in ((3, 4), (5,), (2, 2, 3), ())]
    global_norm = np.sqrt(sum((g.astype(np.float64) ** 2).sum() for g in grads))
    assert 0.5 < global_norm < 100.0  # one case clips, the other leaves the gradients as they are
    # torch.nn.utils.clip_grad_norm_ (the official Swin recipe's): min(1, max_norm / (norm + 1e-6))
    expected = [g * min(1.0, clip_norm / (global_norm + 1e-6)) for g in grads]

    @ms.jit
    def clip(tensors):
        return clip_by_global_norm(tensors, clip_norm)
    got = clip(tuple(Tensor(g) for g in grads))
    for g, e in zip(got, expected):
        assert g.shape == e.shape and g.dtype == ms.float32
        np.testing.assert_allclose(g.asnumpy(), e, rtol=1e-6, atol=1e-7)
        if clip_norm > global_norm:  # not clipped: the gradients as they were, bit for bit
            np.testing.assert_array_equal(g.asnumpy(), e)


def test_clip_by_global_norm_of_float16_gradients_sums_in_float32():
    # 300**2 is beyond float16's range (65504): a float16 sum of squares would be inf.
    grads = (Tensor(np.full((3,), 300, np.float16)), Tensor(np.ones((2, 2), np.float32)))
    got = clip_by_global_norm(grads, 1.0)
    norm = np.sqrt(3 * 300.0 ** 2 + 4)
    assert got[0].dtype == ms.float16 and got[1].dtype == ms.float32
    np.testing.assert_allclose(got[0].asnumpy(), 300 / norm, rtol=1e-3)
    np.testing.assert_allclose(got[1].asnumpy(), 1 / norm, rtol=1e-6)


def _dense_sgd_update(clip_grad, loss_scale):
    """The weight change of one make_train_step step with plain SGD at lr 1 (so minus the applied
    gradients) on a small Dense layer, the same weights and batch every call."""
    rng = np.random.default_rng(2)
    net = nn.Dense(4, 3)
    for param in net.trainable_params():
        param.set_data(Tensor(rng.normal(size=param.shape).astype(np.float32)))
    before = [p.asnumpy().copy() for p in net.trainable_params()]
    scaler = None if loss_scale is None else ms.amp.DynamicLossScaler(loss_scale, 2, 1000)
    step = make_train_step(net, nn.CrossEntropyLoss(), nn.SGD(net.trainable_params(), learning_rate=1.0), scaler,
                           clip_grad)
    loss, overflow, reported_scale = step([(Tensor(rng.normal(size=(6, 4)).astype(np.float32) * 3),
                                            Tensor(np.array([0, 1, 2, 0, 1, 2], np.int32)))])
    assert np.isfinite(loss.asnumpy()) and not overflow.asnumpy()
    assert reported_scale.asnumpy() == (1.0 if loss_scale is None else loss_scale)
    return [b - p.asnumpy() for b, p in zip(before, net.trainable_params())]


def test_a_skipped_step_advances_the_learning_rate_and_not_adamws_update_count():
    """The learning rate follows the training steps, a skipped one included (the official loops call
    their scheduler every iteration); AdamW's bias correction counts the applied updates (torch's
    per-parameter step, which apex's skipped step leaves as it was)."""
    from src.engine.optim import AdamW
    rng = np.random.default_rng(4)
    net = nn.Dense(4, 3)
    for param in net.trainable_params():
        param.set_data(Tensor(rng.normal(size=param.shape).astype(np.float32)))
    optimizer = AdamW(net.trainable_params(), learning_rate=Tensor(np.array([0.1, 0.2, 0.3], np.float32)))
    step = make_train_step(net, nn.CrossEntropyLoss(), optimizer, ms.amp.DynamicLossScaler(2.0 ** 8, 2, 1000))
    images, labels = Tensor(rng.normal(size=(6, 4)).astype(np.float32)), Tensor(np.array([0, 1, 2, 0, 1, 2], np.int32))
    _, overflow, _ = step([(images * np.float32(np.inf), labels)])
    assert overflow.asnumpy()
    assert (optimizer.global_step.asnumpy().tolist(), optimizer.update_count.asnumpy().tolist()) == ([1], [0])
    before = [p.asnumpy().copy() for p in net.trainable_params()]
    _, overflow, _ = step([(images, labels)])
    assert not overflow.asnumpy()
    assert (optimizer.global_step.asnumpy().tolist(), optimizer.update_count.asnumpy().tolist()) == ([2], [1])
    # torch's first AdamW update moves each weight by lr * g / (|g| + eps): here the second step's lr,
    # 0.2 (the first's, 0.1, if the skipped step were not counted; 0.74 x 0.2 with t = 2)
    for b, p in zip(before, net.trainable_params()):
        np.testing.assert_allclose(np.abs(b - p.asnumpy()), 0.2, rtol=1e-4)


# A training step at amp O2 of both attention layers in both formulations, a LayerNorm and the
# trainer's loss, run in a fresh process with MindSpore's IR dump on (the dump is set up before the
# process compiles anything; MindSpore compiles only code it can read from a file).
ISLANDS_WORKER = """
import mindspore as ms
import numpy as np
from mindspore import Tensor, nn, ops
from src.engine.context import use_device
from src.engine.train_step import make_train_step
from src.engine.loss import SoftTargetCrossEntropy
from src.layers import LocalAttentionACmix, WindowAttentionACmix, shifted_window_mask
from src.layers.formulation import Formulation

class Net(nn.Cell):
    def __init__(self):
        super().__init__()
        self.local = nn.CellList([LocalAttentionACmix(8, 8, head=2, formulation=f) for f in ('portable', 'cpu')])
        self.window = nn.CellList([WindowAttentionACmix(8, 4, 2, formulation=f) for f in ('portable', 'cpu')])
        self.norm = nn.CellList([Formulation(f).layer_norm(8) for f in ('portable', 'cpu')])
        self.head = nn.Dense(8, 3)
        self.mask = Tensor(shifted_window_mask(8, 8, 4, 2))

    def construct(self, x):
        for local in self.local:
            x = local(x)
        x = ops.transpose(x, (0, 2, 3, 1))
        for window, norm in zip(self.window, self.norm):
            x = norm(window(x, self.mask))
        return self.head(x.mean((1, 2)))

ms.set_context(mode=ms.GRAPH_MODE)
use_device('CPU')
net = ms.amp.auto_mixed_precision(Net(), 'O2')
opt = nn.SGD(net.trainable_params(), learning_rate=0.01)
scaler = ms.amp.DynamicLossScaler(scale_value=2.0 ** 10, scale_factor=2, scale_window=1000)
step = make_train_step(net, SoftTargetCrossEntropy(), opt, scaler)
x = Tensor(np.random.default_rng(0).normal(size=(2, 8, 8, 8)).astype(np.float32))
loss, _, _ = step([(x, Tensor(np.eye(3, dtype=np.float32)[[0, 2]]))])
assert np.isfinite(loss.asnumpy())
"""


def test_amp_o2_keeps_softmax_layer_norm_and_loss_in_float32(tmp_path):
    """apex O1 (the official training's amp) runs matmuls in float16 and softmax, LayerNorm and the loss
    in float32; at O2 the compiled training step has the same islands, in both formulations."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, **audit_graph.DUMP_ENV, **{audit_graph.DUMP_PATH_ENV: str(tmp_path / 'ir')},
               PYTHONPATH=os.pathsep.join([root] + [p for p in [os.environ.get('PYTHONPATH')] if p]))
    worker = tmp_path / 'islands_worker.py'
    worker.write_text(ISLANDS_WORKER)
    proc = subprocess.run([sys.executable, str(worker)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    nodes = []
    for path in glob.glob(str(tmp_path / 'ir' / '**' / '*_validate_*.ir'), recursive=True):
        with open(path) as f:
            nodes += audit_graph.parse_ir(f.read())

    def dtypes(node):
        return {d for d, _ in node.inputs + node.outputs}

    def of(*names):
        return [n for n in nodes if n.name in names]
    # the step really is mixed precision: float16 matmuls
    assert any(dtypes(n) == {'Float16'} for n in of('BatchMatMul', 'MatMul'))
    softmax = of('Softmax')
    assert len(softmax) == 4  # two local and two window attentions
    islands = softmax + of('SoftmaxBackward', 'LayerNorm', 'LayerNormGrad', 'LogSoftmax', 'LogSoftmaxGrad')
    # the CPU formulation's LayerNorm is a Custom op, float32 only: it runs only where its input is float32
    assert of('LayerNorm') and of('Custom') and of('LogSoftmax') and of('SoftmaxBackward')
    for node in islands + of('Custom'):
        assert dtypes(node) == {'Float32'}, (node.name, node.inputs, node.outputs, node.source(root))


@pytest.mark.parametrize('loss_scale', [None, 2.0 ** 10])
def test_train_step_clips_the_unscaled_gradients(loss_scale):
    gradients = _dense_sgd_update(None, None)
    global_norm = np.sqrt(sum((g.astype(np.float64) ** 2).sum() for g in gradients))
    clip_norm = global_norm / 4
    clipped = _dense_sgd_update(clip_norm, loss_scale)
    for c, g in zip(clipped, gradients):
        np.testing.assert_allclose(c, g * clip_norm / global_norm, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize('key, value', [('loss_scale', 0.5), ('loss_scale', float('inf')), ('max_skipped_steps', 0)])
def test_loss_scaling_keys_are_validated(key, value):
    from src.config import load_config
    with pytest.raises(ConfigError, match=f"config key '{key}' must be"):
        load_config(None, {key: value})


@pytest.fixture(scope='module')
def overflowing_run(tiny_imagefolder, tmp_path_factory):
    """4 epochs at amp O2 from a loss scale the fp16 gradients overflow at; all checkpoints kept."""
    out = tmp_path_factory.mktemp('overflowing_run')
    cfg = tiny_config(tiny_imagefolder, out, epochs=4, eval_interval=0, keep_checkpoint_max=4, amp_level='O2',
                      loss_scale=OVERFLOWING_SCALE)
    return out, train(cfg)


@pytest.mark.slow
def test_overflowing_steps_are_skipped_counted_and_training_recovers(overflowing_run):
    out, history = overflowing_run
    skipped = [r['skipped_steps'] for r in history]
    scales = [r['loss_scale'] for r in history]
    assert skipped[0] > 0 and sum(skipped) < 4 * 3, skipped
    assert skipped[-1] == 0 and skipped[-2] == 0, skipped  # recovered: the last epochs apply every step
    # Each skipped step halved the scale (no increase: that takes 1000 clean steps), so the counts and
    # the scales the step reported agree.
    assert scales == [OVERFLOWING_SCALE / 2 ** n for n in np.cumsum(skipped)], (scales, skipped)
    assert history[-1]['train_loss'] < history[0]['train_loss']
    assert json.loads((out / 'metrics.json').read_text()) == history
    # the schedule's position is the number of steps, skipped ones included
    _, saved, _ = split_training_checkpoint(read_training_checkpoint(str(out / 'checkpoints' / 'epoch_004.ckpt')))
    assert saved['global_step'].asnumpy().tolist() == [4 * 3]
    log = (out / 'train.log').read_text()
    assert re.search(rf'epoch 1/4 step 1/3 loss \S+ lr \S+ loss scale {OVERFLOWING_SCALE / 2:g} '
                     r'\(skipped 1 of 1 steps\) ',
                     log), log


def test_resume_continues_with_the_saved_loss_scale(overflowing_run, tiny_imagefolder, tmp_path):
    full_dir, full = overflowing_run
    # epoch 3's checkpoint: its scale is below the first and its count of clean steps is not 0 (no step
    # of epoch 3 overflows)
    saved = load_training_checkpoint(str(full_dir / 'checkpoints' / 'epoch_003.ckpt'),
                                     build_model(tiny_config(tiny_imagefolder, tmp_path)))
    assert saved['loss_scale'] == full[2]['loss_scale'] < OVERFLOWING_SCALE
    # The scaler's count of clean steps since the last overflow (it doubles the scale at 1000).
    assert saved['loss_scale_counter'] > 0
    os.makedirs(tmp_path / 'checkpoints')
    shutil.copy(full_dir / 'checkpoints' / 'epoch_003.ckpt', tmp_path / 'checkpoints')
    (tmp_path / 'metrics.json').write_text(json.dumps(full[:3]))
    # Restarted from OVERFLOWING_SCALE, epoch 4 would skip steps again; from the saved scale it is the
    # uninterrupted run's epoch 4.
    resumed = train(tiny_config(tiny_imagefolder, tmp_path, epochs=4, eval_interval=0, keep_checkpoint_max=4,
                                amp_level='O2', loss_scale=OVERFLOWING_SCALE, resume='auto'))
    assert len(resumed) == 4
    for a, b in zip(full[3:], resumed[3:]):
        assert (a['loss_scale'], a['skipped_steps']) == (b['loss_scale'], b['skipped_steps'])
        np.testing.assert_allclose(a['train_loss'], b['train_loss'], rtol=1e-5)
    net = build_model(tiny_config(tiny_imagefolder, tmp_path))
    full_end = load_training_checkpoint(str(full_dir / 'checkpoints' / 'epoch_004.ckpt'), net)
    resumed_end = load_training_checkpoint(str(tmp_path / 'checkpoints' / 'epoch_004.ckpt'), net)
    assert resumed_end['loss_scale_counter'] == full_end['loss_scale_counter'] > saved['loss_scale_counter']
    assert f'loss scale {saved["loss_scale"]:g} (from the checkpoint)' in (tmp_path / 'train.log').read_text()


def test_a_run_that_only_skips_steps_stops_with_one_error_line(tiny_imagefolder, tmp_path, capsys):
    # Every step overflows at 1e30, and halving it 5 times cannot help: stop at the fifth, in epoch 2.
    argv = ['--arch', 'resnet_mini', '--num_classes', '3', '--image_size', '32', '--data_dir', tiny_imagefolder,
            '--output_dir', str(tmp_path), '--batch_size', '8', '--num_workers', '1', '--crop_pct', '1.0',
            '--epochs', '3', '--warmup_epochs', '0', '--eval_interval', '0', '--amp_level', 'O2',
            '--loss_scale', '1.0e+30', '--max_skipped_steps', '5']  # (yaml reads 1e30 as a string)
    code = run_main(train_script.main, argv)
    err = capsys.readouterr().err
    last_checkpoint = tmp_path / 'checkpoints' / 'epoch_001.ckpt'
    scale = float(np.float32(1e30)) / 2 ** 5
    assert code == 2 and err.count('\n') == 1, err
    assert err.startswith('error: 5 steps in a row skipped for gradient overflow, the last at epoch 2, step 2 '
                          f'(global step 5); loss scale now {scale:g}; last good checkpoint: {last_checkpoint}. '), err
    assert os.listdir(tmp_path / 'checkpoints') == ['epoch_001.ckpt']
    [epoch_1] = json.loads((tmp_path / 'metrics.json').read_text())
    assert epoch_1['skipped_steps'] == 3 and epoch_1['loss_scale'] == float(np.float32(1e30)) / 2 ** 3


def test_records_without_loss_scaling_have_no_loss_scale_fields(tiny_imagefolder, tmp_path):
    history = train(tiny_config(tiny_imagefolder, tmp_path, epochs=1, eval_interval=0))
    assert 'loss_scale' not in history[0] and 'skipped_steps' not in history[0]
    assert 'loss scale' not in (tmp_path / 'train.log').read_text()
    meta = load_training_checkpoint(str(tmp_path / 'checkpoints' / 'epoch_001.ckpt'),
                                    build_model(tiny_config(tiny_imagefolder, tmp_path)))
    assert 'loss_scale' not in meta
