"""One factory for the training step: the trainer, the graph audit and the benchmark build their step
with engine.step.build_training_step, so the graph the audit proves for Ascend and GPU is wired as the
trainer's."""
from conftest import tiny_config
from src.engine import step as step_module
from src.engine.trainer import TrainingRun
from src.tools import audit_graph, benchmark


def test_the_trainer_the_audit_and_the_benchmark_build_their_step_with_one_factory(tiny_imagefolder, tmp_path,
                                                                                      monkeypatch):
    """Every make_train_step call that goes through the factory is recorded; the trainer's and the
    audit's, for the same settings, are the same call, and the benchmark's goes through it too."""
    calls = []
    make_train_step = step_module.make_train_step

    def recording(net, loss_fn, optimizer, loss_scaler=None, clip_grad=None, grad_reducer=None, jit_level='O0',
                  accumulation_steps=1, ema=None):
        calls.append({'loss': type(loss_fn).__name__, 'optimizer': type(optimizer).__name__,
                      'loss_scale': None if loss_scaler is None else float(loss_scaler.scale_value.asnumpy()),
                      'clip_grad': clip_grad, 'grad_reducer': grad_reducer, 'jit_level': jit_level,
                      'accumulation_steps': accumulation_steps, 'ema': ema is not None,
                      'network': type(net).__name__})
        return make_train_step(net, loss_fn, optimizer, loss_scaler, clip_grad, grad_reducer, jit_level,
                               accumulation_steps, ema)

    monkeypatch.setattr(step_module, 'make_train_step', recording)
    # the audit's O2 step of acmix_resnet_mini (no shipped config: the defaults, SGD) and the trainer's
    # run of the same model and settings
    audit_cfg = audit_graph._audit_config('acmix_resnet_mini', None)
    audit_graph.audited_step(audit_cfg, 'train_O2')
    TrainingRun(tiny_config(tiny_imagefolder, tmp_path, arch='acmix_resnet_mini', num_classes=10, amp_level='O2',
                            ema=True, clip_grad=5.0, accumulation_steps=2, loss_scale=audit_cfg.loss_scale))
    benchmark.run_one('resnet_mini', 'train', 2, 32, 'CPU', warmup=1, steps=1)
    assert len(calls) == 3, calls
    audit, trainer, timed = calls
    assert audit == trainer, (audit, trainer)
    assert audit['accumulation_steps'] == 2 and audit['ema'] and audit['loss_scale'] == 65536.0
    assert timed['loss'] == audit['loss'] == 'SoftTargetCrossEntropy' and timed['optimizer'] == 'Momentum'
    assert timed['loss_scale'] is None and timed['clip_grad'] is None and timed['accumulation_steps'] == 1
