"""The graph audit (src/tools/audit_graph.py): its allowlist against the installed MindSpore's API
docstrings, that it catches each kind of violation in a real compiled graph, and that every registered
model passes it in the portable formulation, both targets, training (O0 and O2) and inference: audited
itself, or built only from the layers of a model that is."""
import glob
import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from src.models import list_models
from src.tools import audit_graph

ROOT = Path(__file__).resolve().parents[1]


def _documented_platforms(page):
    """The Supported Platforms of an API page, read from its docstring in the installed MindSpore."""
    module, _, name = page.rpartition('.')
    doc = getattr(importlib.import_module(module), name).__doc__ or ''
    m = re.search(r'Supported Platforms:\s*\n\s*(.*)', doc)
    return sorted(re.findall(r'``(\w+)``', m.group(1))) if m else None


def test_allowlist_pages_list_the_platforms_they_claim():
    allowlist = audit_graph.load_allowlist()
    for name, entry in allowlist.items():
        assert set(audit_graph.TARGETS) <= set(entry['platforms']), name
        if entry['page'] != 'graph structure':
            assert _documented_platforms(entry['page']) == sorted(entry['platforms']), (name, entry['page'])


@pytest.fixture(scope='module')
def violating_graphs(tmp_path_factory):
    """The IR nodes and the MINDIR of tests/audit_violations_worker.py, compiled with the IR dump on."""
    out = tmp_path_factory.mktemp('audit_violations')
    env = dict(os.environ, **audit_graph.DUMP_ENV, **{audit_graph.DUMP_PATH_ENV: str(out / 'ir')})
    proc = subprocess.run([sys.executable, str(ROOT / 'tests' / 'audit_violations_worker.py'), str(out)],
                          cwd=out, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    nodes = []
    for path in glob.glob(str(out / 'ir' / '*_validate_*.ir')):
        with open(path) as f:
            nodes += audit_graph.parse_ir(f.read())
    return nodes, str(out / 'with_inf.mindir')


def test_the_audit_catches_each_kind_of_violation(violating_graphs):
    nodes, mindir = violating_graphs
    allowlist = audit_graph.load_allowlist()
    found = {target: audit_graph.check_nodes(nodes, allowlist, target, ROOT) for target in audit_graph.TARGETS}

    def reported(target, prim, text):
        return [v for v in found[target] if v[0] == prim and text in v[1]]

    grouped = reported('Ascend', 'Conv2D', 'not depthwise')
    assert len(grouped) == 1 and 'group 2, in_channels 4, out_channels 8' in grouped[0][1]
    assert 'audit_violations_worker.py' in grouped[0][4] and 'self.grouped(x)' in grouped[0][4]
    assert 'group: I64(2)' in grouped[0][2]  # the attributes are printed
    assert not reported('GPU', 'Conv2D', 'not depthwise')  # the constraint is Ascend's
    for target in audit_graph.TARGETS:
        assert reported(target, 'Custom', 'not in the allowlist')
        assert reported(target, 'PrimFunc_BatchMatMul', 'constant operand')
        assert reported(target, 'PrimFunc_Add', '+-inf')
    # the depthwise convolution (in == out == group) is allowed, and nothing else is reported
    assert {v[0] for v in found['Ascend']} == {'Conv2D', 'Custom', 'PrimFunc_BatchMatMul', 'PrimFunc_Add'}
    assert audit_graph.mindir_infinities(mindir)


@pytest.mark.slow
def test_the_cpu_formulation_fails_the_audit():
    """The CPU formulation's identity-matmul axis swaps are what the audit exists to catch (the
    portable formulation of the same model passes: test_every_registered_model_passes_the_audit)."""
    cpu = subprocess.run([sys.executable, '-m', 'src.tools.audit_graph', '--arch', 'acmix_resnet_mini',
                          '--graphs', 'infer', '--target', 'GPU', '--formulation', 'cpu'],
                         cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert cpu.returncode == 1, cpu.stdout + cpu.stderr
    assert 'constant operand' in cpu.stdout and 'src/layers/cpu/local_attention.py' in cpu.stdout


# A model built only from layers of an audited one, each with the same settings, in the same recipe:
# at the audited model's input size its graphs hold the audited model's primitives, each with the same
# attributes and shapes (the checks are per node; the step's own nodes, optimizer, clipping, EMA and
# loss scaling, are elementwise over the parameters), so that audit proves them. (The audit builds
# every model at a small size in place of the 224 px users train at; ResNet-26 alone would be audited
# at 64 px, ResNet-38 is at 128.) test_has_only_the_layers_of_an_audited_model checks the
# premise in seconds. Swin-S repeats Swin-T's layers (stage 3 has 18 blocks instead of 6; only
# stochastic depth's rates differ). ResNet-38 (2-3-5-2 blocks) has every kind of block of ResNet-26
# (1-2-4-1) and of ResNet-50 (3-4-6-3): each stage's first block and, in each stage, the next; stage
# 1 of ResNet-26 lacks the second kind, so ResNet-38 is the one audited. Auditing the others too took
# 5 minutes of CI's CPU time for the Swins and 2.5 for the ResNets.
AUDITED_AS = {'acmix_swin_small': 'acmix_swin_tiny', 'swin_small': 'swin_tiny',
              'acmix_resnet26': 'acmix_resnet38', 'resnet26': 'resnet38',
              'acmix_resnet50': 'acmix_resnet38', 'resnet50': 'resnet38'}


def _layer_settings(arch, image_size=None):
    """{(Cell class, its public scalar settings)} of arch as the audit builds it (portable formulation,
    the audit's size or image_size), stochastic depth's rate left out."""
    from mindspore.nn.utils import no_init_parameters

    from src.models import build_model
    with no_init_parameters():
        net = build_model(audit_graph._audit_config(arch, image_size))
    def scalar(v):
        return isinstance(v, (bool, int, float, str)) or (isinstance(v, tuple) and all(map(scalar, v)))
    return {(type(cell).__name__, tuple(sorted((k, v) for k, v in vars(cell).items()
                                               if not k.startswith('_') and k != 'keep_prob' and scalar(v))))
            for _, cell in net.cells_and_names()}


@pytest.mark.parametrize('arch, audited', sorted(AUDITED_AS.items()))
def test_has_only_the_layers_of_an_audited_model(arch, audited):
    from src.config import load_config
    assert audited not in AUDITED_AS
    size = audit_graph._audit_config(audited, None).image_size
    assert _layer_settings(arch, size) <= _layer_settings(audited)
    shipped = [load_config(str(ROOT / 'config' / f'{name}.yaml')) for name in (arch, audited)]
    differ = {k for k in shipped[0] if shipped[0][k] != shipped[1].get(k)}
    assert differ - {'drop_path_rate'} == {'arch', 'output_dir'}, differ  # the same optimizer, clipping, amp


@pytest.mark.slow
@pytest.mark.long
@pytest.mark.parametrize('arch', [arch for arch in list_models() if arch not in AUDITED_AS])
def test_every_registered_model_passes_the_audit(arch):
    """What CI checks for every model (but those built from an audited one's layers, above): training
    (O0 and O2, loss scaling on) and inference, for Ascend and GPU, in the portable formulation. One
    test per model, so that the models' audits spread over the test workers."""
    proc = subprocess.run([sys.executable, '-m', 'src.tools.audit_graph', '--arch', arch],
                          cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    results = [line for line in proc.stdout.splitlines() if line and not line.startswith(' ')]
    assert len(results) == len(audit_graph.GRAPHS) * len(audit_graph.TARGETS), proc.stdout
    assert all(line.startswith(arch + ' ') and line.endswith(', ok') for line in results), proc.stdout


@pytest.mark.slow
def test_swin_padded_to_any_size_passes_the_audit():
    """At 37 px every level of acmix_swin_mini pads (patch embedding, windows, patch merging): the
    zero padding and the crop back, and their gradients, are in the allowlist for both targets."""
    proc = subprocess.run([sys.executable, '-m', 'src.tools.audit_graph', '--arch', 'acmix_swin_mini',
                           '--image_size', '37', '--graphs', 'infer', 'train_O0'],
                          cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    results = [line for line in proc.stdout.splitlines() if line and not line.startswith(' ')]
    assert len(results) == 2 * len(audit_graph.TARGETS) and all(line.endswith(', ok') for line in results), proc.stdout


def test_each_graph_a_worker_could_not_compile_is_reported_as_failed():
    """The worker of a model compiles all its graphs; when it stops before a graph's record (here it
    cannot build the model at all), each graph is reported with the worker's error and the exit code is 1."""
    proc = subprocess.run([sys.executable, '-m', 'src.tools.audit_graph', '--arch', 'acmix_resnet_mini',
                           '--image_size', '8', '--graphs', 'infer', 'train_O0'],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert [line.split(':')[0] for line in lines] == ['FAILED acmix_resnet_mini infer',
                                                      'FAILED acmix_resnet_mini train_O0'], proc.stdout
    assert all('exit code 2' in line and 'image size 8 is too small' in line for line in lines), proc.stdout
