"""The benchmark tool as a smoke test: one small model, one timed step (never a timed assertion)."""
import json
import subprocess
import sys

from conftest import ROOT
from src.tools.benchmark import KEYS, combine_rounds, format_ratios


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
    assert 'acmix_resnet_mini / resnet_mini train: step time x' in proc.stdout


def test_rounds_take_medians_and_ratios_pair_twins():
    def rec(arch, step, peak):
        return dict(arch=arch, mode='train', batch_size=8, image_size=224, compile_s=1.0, step_s=step,
                    images_per_s=8 / step, peak_rss_gb=peak)
    rounds = [[rec('acmix_x', s, p), rec('x', 1.0, 1.0)] for s, p in ((2.0, 3.0), (4.0, 2.0), (3.0, 2.5))]
    merged = combine_rounds(rounds)
    assert merged[0]['step_s'] == 3.0 and merged[0]['peak_rss_gb'] == 3.0 and merged[0]['images_per_s'] == 2.667
    assert format_ratios(merged) == 'acmix_x / x train: step time x3.00, peak memory x3.00'
    # the plain twin drifts between rounds: the per-round pairs give their own ratios
    rounds[1][1]['step_s'] = 2.0
    assert format_ratios(combine_rounds(rounds), rounds) == (
        'acmix_x / x train: step time x3.00, peak memory x3.00; per-round step time x2.00 to x3.00, median x2.00')
