"""The benchmark tool as a smoke test: one small model, one timed step (never a timed assertion)."""
import json
import subprocess
import sys

from conftest import ROOT
from src.tools.benchmark import KEYS, combine_rounds, compile_seconds, format_ratios


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
