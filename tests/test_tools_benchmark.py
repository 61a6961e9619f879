"""The benchmark tool as a smoke test: one small model, one timed step (never a timed assertion)."""
import json
import subprocess
import sys
from types import SimpleNamespace

import pytest

from conftest import ROOT
from src.errors import UserError
from src.tools import benchmark
from src.tools.benchmark import (
    KEYS,
    combine_rounds,
    compile_seconds,
    format_ratios,
    format_table,
)


@pytest.mark.slow
def test_benchmark_smoke(tmp_path):
    out = tmp_path / 'bench.json'
    proc = subprocess.run([sys.executable, '-m', 'src.tools.benchmark', '--arch', 'acmix_resnet_mini', 'resnet_mini',
                           '--mode', 'infer', 'train', '--batch_size', '2', '--image_size', '32', '--warmup', '1',
                           '--steps', '1', '--json', str(out)], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = json.loads(out.read_text())
    assert [(r['arch'], r['mode']) for r in records] == [('acmix_resnet_mini', 'infer'), ('acmix_resnet_mini', 'train'),
                                                          ('resnet_mini', 'infer'), ('resnet_mini', 'train')]
    for r in records:
        assert tuple(r) == KEYS and r['step_s'] > 0 and r['peak_rss_gb'] > 0.1 and r['batch_size'] == 2
        # compile_s comes from MindSpore's compile events, inside the first call
        assert 0 < r['compile_s'] < r['first_step_s']
    assert 'no compile events' not in proc.stderr
    assert 'acmix_resnet_mini / resnet_mini train: step time x' in proc.stdout


def test_rounds_take_medians_and_ratios_pair_twins():
    def rec(arch, step, peak):
        return dict(arch=arch, mode='train', batch_size=8, image_size=224, compile_s=1.0, first_step_s=2.0,
                    step_s=step, images_per_s=8 / step, peak_rss_gb=peak)
    rounds = [[rec('acmix_x', s, p), rec('x', 1.0, 1.0)] for s, p in ((2.0, 3.0), (4.0, 2.0), (3.0, 2.5))]
    merged = combine_rounds(rounds)
    assert merged[0]['step_s'] == 3.0 and merged[0]['peak_rss_gb'] == 3.0 and merged[0]['images_per_s'] == 2.667
    assert format_ratios(merged) == 'acmix_x / x train: step time x3.00, peak memory x3.00'
    # the plain twin drifts between rounds: the per-round pairs give their own ratios
    rounds[1][1]['step_s'] = 2.0
    assert format_ratios(combine_rounds(rounds), rounds) == (
        'acmix_x / x train: step time x3.00, peak memory x3.00; per-round step time x2.00 to x3.00, median x2.00')


def test_compile_seconds_reads_mindspore_compile_events():
    def event(time, what):
        return (f"[INFO] PIPELINE(1,7f,python):2026-11-21-{time} [mindspore/ccsrc/frontend/jit/ps/"
                f"event_message_print.cc:42] PrintEventMessage] {what} compiling 'step'.")
    log = '\n'.join([
        '[INFO] PIPELINE(1,7f,python):2026-11-21-23:59:58.000.000 [x.cc:1] CompileInner] Start compiling, phase: step',
        event('23:59:58.250.000', 'Start'), event('23:59:59.000.000', 'Start'),  # a nested compile counts once
        event('23:59:59.500.500', 'End'), event('23:59:59.750.250', 'End'),
        event('23:59:59.800.000', 'Start'), event('23:59:59.900.000', 'End')])
    assert compile_seconds(log) == 1.6  # 1.50025 + 0.1, to the ms
    assert compile_seconds('no events here') is None
    assert compile_seconds(event('23:59:58.250.000', 'Start')) is None  # never finished


@pytest.mark.slow
def test_benchmark_official_smoke(tmp_path):
    pytest.importorskip('torch')
    out = tmp_path / 'bench.json'
    proc = subprocess.run([sys.executable, '-m', 'src.tools.benchmark', '--arch', 'acmix_swin_mini', '--mode', 'infer',
                           'train', '--batch_size', '2', '--image_size', '32', '--warmup', '1', '--steps', '1',
                           '--threads', '2', '--official', '--json', str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = json.loads(out.read_text())
    # each mode's official run right after ours, the records arch by arch
    assert [(r['arch'], r['mode']) for r in records] == [
        ('acmix_swin_mini', 'infer'), ('acmix_swin_mini', 'train'),
        ('official:acmix_swin_mini', 'infer'), ('official:acmix_swin_mini', 'train')]
    assert proc.stderr.index('official:acmix_swin_mini infer') < proc.stderr.index('acmix_swin_mini train')
    for r in records:
        assert tuple(r) == KEYS and r['step_s'] > 0 and r['peak_rss_gb'] > 0.1 and r['image_size'] == 32
        assert (r['compile_s'] is None) == r['arch'].startswith('official:')
    assert 'threads per worker: 2 ' in proc.stdout
    assert 'acmix_swin_mini / official:acmix_swin_mini train: throughput x' in proc.stdout
    assert 'acmix_swin_mini / official:acmix_swin_mini infer: throughput x' in proc.stdout


def test_official_worker_uses_the_given_threads():
    torch = pytest.importorskip('torch')
    before = torch.get_num_threads()
    try:
        record = benchmark.run_official('swin_mini', 'train', 2, 32, warmup=1, steps=1, threads=1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert tuple(record) == KEYS and record['arch'] == 'official:swin_mini' and record['compile_s'] is None


@pytest.mark.slow
def test_official_models_are_the_registered_configurations():
    """The same trainable parameters and stochastic-depth rates as our model, so that the official run
    does the same work."""
    pytest.importorskip('torch')
    from mindspore.nn.utils import no_init_parameters

    from src.layers.drop_path import DropPath
    from src.models import create_model, list_models, size_overrides
    # every registered model but the ResNet minis, whose 'small' stem the official ResNet has not
    assert sorted(set(list_models()) - set(benchmark.official_models())) == ['acmix_resnet_mini', 'resnet_mini']
    for arch in benchmark.official_models():
        size = 32 if arch.endswith('_mini') else 224
        with no_init_parameters():  # shapes and rates only
            ours = create_model(arch, num_classes=1000, **size_overrides(arch, size))
        theirs = benchmark.build_official(arch, size)
        assert (sum(p.size for p in ours.trainable_params())
                == sum(p.numel() for p in theirs.parameters() if p.requires_grad)), arch
        rates = [1 - c.keep_prob for _, c in ours.cells_and_names() if isinstance(c, DropPath)]
        official = [m.p for m in theirs.modules() if type(m).__name__ == 'DropPath']
        assert rates == pytest.approx(official, abs=1e-6), arch


def test_ratios_pair_each_model_with_its_official_formulation():
    def rec(arch, mode, step, peak, compile_s=1.0):
        return dict(arch=arch, mode=mode, batch_size=8, image_size=224, compile_s=compile_s, first_step_s=2.0,
                    step_s=step, images_per_s=8 / step, peak_rss_gb=peak)
    rounds = [[rec('acmix_model_x', 'train', 2.0, 3.0), rec('official:acmix_model_x', 'train', s, 2.0, None),
               rec('model_x', 'train', 1.0, 1.0), rec('official:model_x', 'infer', 1.0, 1.0, None)]
              for s in (1.0, 4.0, 3.0)]
    merged = combine_rounds(rounds)
    assert merged[1]['compile_s'] is None and merged[1]['step_s'] == 3.0
    # throughput: ours over official, so 1.5 means ours is faster; model_x has no official run in its mode
    assert format_ratios(merged, rounds).splitlines() == [
        'acmix_model_x / model_x train: step time x2.00, peak memory x3.00; '
        'per-round step time x2.00 to x2.00, median x2.00',
        'acmix_model_x / official:acmix_model_x train: throughput x1.50, peak memory x1.50; '
        'per-round throughput x0.50 to x2.00, median x1.50']
    head, _, _, official, *_ = format_table(merged).splitlines()
    assert official.split()[:2] == ['official:acmix_model_x', 'train'] and official.split()[4] == '-'
    assert official.index('train') == head.index('mode')  # the arch column fits the longest name


def test_official_errors_before_anything_runs(monkeypatch):
    with pytest.raises(UserError, match='none of resnet_mini has an official formulation'):
        benchmark.check_official(['resnet_mini'], 'CPU')
    with pytest.raises(UserError, match='CPU only'):
        benchmark.check_official(['swin_mini'], 'GPU')
    find_spec = benchmark.importlib.util.find_spec
    monkeypatch.setattr(benchmark.importlib.util, 'find_spec',
                        lambda name, *rest: None if name == 'torch' else find_spec(name, *rest))
    ran = []
    monkeypatch.setattr(benchmark, 'run_isolated', lambda *args: ran.append(args))
    with pytest.raises(UserError, match='PyTorch, which is not installed'):
        benchmark.main(['--arch', 'swin_mini', '--official'])
    assert not ran


@pytest.mark.slow
def test_mindcv_worker_times_mindcvs_model_in_our_set_up():
    pytest.importorskip('mindcv')
    # in a fresh worker, as the benchmark starts it, so mindcv's Cells never live in the pytest process
    args = SimpleNamespace(batch_size=1, image_size=224, device_target='CPU', warmup=1, steps=1, threads=2,
                           formulation=None)
    record = benchmark.run_isolated('mindcv:swin_tiny', 'infer', args)
    assert 'error' not in record, record.get('error')
    assert tuple(record) == KEYS and record['arch'] == 'mindcv:swin_tiny' and record['step_s'] > 0


def test_ratios_pair_a_model_with_mindcvs():
    def rec(arch, step):
        return dict(arch=arch, mode='infer', batch_size=8, image_size=224, compile_s=1.0, first_step_s=2.0,
                    step_s=step, images_per_s=8 / step, peak_rss_gb=1.0)
    assert format_ratios([rec('swin_x', 2.0), rec('mindcv:swin_x', 3.0)]) == (
        'swin_x / mindcv:swin_x infer: throughput x1.50, peak memory x1.00')


def test_mindcv_errors_before_anything_runs(monkeypatch):
    find_spec = benchmark.importlib.util.find_spec
    monkeypatch.setattr(benchmark.importlib.util, 'find_spec',
                        lambda name, *rest: object() if name == 'mindcv' else find_spec(name, *rest))
    with pytest.raises(UserError, match='none of acmix_swin_tiny has a mindcv model'):
        benchmark.check_mindcv(['acmix_swin_tiny'], 224)
    assert benchmark.check_mindcv(['acmix_swin_tiny', 'swin_tiny'], 224) == ['swin_tiny']
    with pytest.raises(UserError, match='built for 224 px inputs, not --image_size 256'):
        benchmark.check_mindcv(['swin_tiny'], 256)
    monkeypatch.setattr(benchmark.importlib.util, 'find_spec',
                        lambda name, *rest: None if name == 'mindcv' else find_spec(name, *rest))
    ran = []
    monkeypatch.setattr(benchmark, 'run_isolated', lambda *args: ran.append(args))
    with pytest.raises(UserError, match='mindcv, which is not installed'):
        benchmark.main(['--arch', 'swin_tiny', '--mindcv'])
    assert not ran


def test_data_benchmark_times_each_pipeline_on_generated_photos(tmp_path):
    """The input-pipeline benchmark (src/tools/benchmark_data.py): photos written, each pipeline timed."""
    pytest.importorskip('matplotlib')
    out = tmp_path / 'data.json'
    proc = subprocess.run([sys.executable, '-m', 'src.tools.benchmark_data', '--images', '6', '--rounds', '2',
                           '--json', str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = json.loads(out.read_text())
    assert [r['pipeline'] for r in records] == ['official', 'fast', 'train', 'train_fast']
    assert all(r['images'] == 6 and len(r['rounds']) == 2 and r['images_per_s'] > 0 for r in records)
    assert 'official / fast: ' in proc.stdout and 'train / train_fast: ' in proc.stdout


def test_data_benchmark_needs_the_split_its_pipelines_read(tmp_path, capsys):
    from src.tools import benchmark_data
    (tmp_path / 'val' / 'a').mkdir(parents=True)
    code = benchmark_data.run_main(benchmark_data.main, ['--data_dir', str(tmp_path), '--pipelines', 'train'])
    assert code == 2
    assert capsys.readouterr().err.strip() == f'error: {tmp_path} has no train/ folder (the train pipelines read it)'
