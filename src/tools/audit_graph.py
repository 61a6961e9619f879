"""Check that the graphs a user runs on Ascend or GPU are built only from what the MindSpore
documentation supports there.

    python -m src.tools.audit_graph --arch all | NAME [NAME ...] [--target Ascend GPU]
        [--graphs infer train_O0 train_O2] [--image_size N] [--jobs 2] [--formulation portable|cpu]

For every model and graph (the exported inference graph, and the training step built by the
trainer's own factory, engine.step.build_training_step, at amp O0 and at O2 (with loss scaling), with
clipping and weight EMA on and the optimizer of the model's shipped config; at O2 with
accumulation_steps 2, whose two graphs hold the same forward and backward plus the accumulation, so
that both forms of the step are audited), a fresh process per model builds the
model in the portable formulation (what every device but the CPU runs) at the smallest of AUDIT_SIZES
it takes without padding (or at --image_size), compiles its graphs one after another on this
machine's CPU with MindSpore's IR dump on (nothing is run: the training steps are compiled only), and
this process reads each graph's final frontend IR (`*_validate_*.ir`: after autodiff and
optimisation, before any backend pass).
Every primitive is checked against the allowlist (`graph_allowlist.yaml`): one entry per primitive,
with the API page it comes from (for a gradient primitive, the page of the public op whose gradient
it is), the platforms that page lists, and the constraints checked. A primitive not in the allowlist
is a violation, and so is a ±inf constant: in the IR, which prints small constants in full (large ones
as `value=[...]`), and in the exported MINDIR, whose constants are read in full. Each violation is
printed with the primitive, its attributes and shapes and the source line; the exit code is 1 if
there is any.

What it cannot see: MindSpore's own device-specific expansions (e.g. `amp.all_finite` reads the
float-status registers on Ascend, and checks the values on CPU), kernel selection on the device,
and the data-parallel step (AllReduce), which needs a launched job.
"""
import argparse
import glob
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import yaml

from ..cli import run_main
from ..errors import ArgumentParser

ALLOWLIST = Path(__file__).resolve().with_name('graph_allowlist.yaml')
TARGETS = ('Ascend', 'GPU')
GRAPHS = ('infer', 'train_O0', 'train_O2')
RESULT_TAG = 'AUDIT_GRAPH '
# The worker's environment: MindSpore's IR dump on (MS_DEV_SAVE_GRAPHS=1), in its own folder, of the
# frontend's final pass only (writing every pass's IR triples the compile time); the training step is
# compiled and not run (MS_DEV_PRECOMPILE_ONLY: `ms.jit` compiles the frontend graph and returns None).
DUMP_ENV = {'MS_DEV_SAVE_GRAPHS': '1', 'MS_DEV_DUMP_IR_PASSES': 'validate'}
DUMP_PATH_ENV = 'MS_DEV_SAVE_GRAPHS_PATH'
PRECOMPILE_ENV = {'MS_DEV_PRECOMPILE_ONLY': '1'}

_NODE = re.compile(r'^  (?:%\d+\([^)]*\) = )?([@%]?[A-Za-z_][\w.]*)\((.*)$')
_INF = re.compile(r'(?<![\w.])[-+]?inf(?![\w])', re.IGNORECASE)
_SOURCE = re.compile(r'(\S+?\.py):(\d+)[^/]*/(.*?)/?(?:<~~.*)?$')
_SHAPE = re.compile(r'<(?:Ref\[)?Tensor\[(\w+)\]\]?, \(([\d, ]*)\)')


class Node:
    """One primitive call of the IR: name, argument and attribute text, input and output shapes,
    scope and source lines."""

    def __init__(self, prim, text):
        self.prim = prim
        self.text = text  # the call: arguments and attributes
        self.inputs, self.outputs = [], []  # [(dtype, shape)]
        self.scope = ''
        self.sources = []

    @property
    def name(self):
        """The primitive without the PrimFunc_ prefix of MindSpore's generated primitives."""
        return self.prim[len('PrimFunc_'):] if self.prim.startswith('PrimFunc_') else self.prim

    @property
    def is_gradient(self):
        return self.scope.startswith('Gradients/')

    def attr(self, key):
        """An integer attribute from primitive_attrs, e.g. group: I64(2) -> 2, or None."""
        m = re.search(r'[{ ]' + re.escape(key) + r': I64\((-?\d+)\)', self.text)
        return int(m.group(1)) if m else None

    def attributes(self):
        m = re.search(r'primitive_attrs: (\{.*?\})(?: cnode_|$)', self.text)
        return m.group(1) if m else ''

    def constant_operands(self):
        """The inline constant tensors among the arguments, as their printed shapes."""
        args = self.text.split(') {', 1)[0].split(') primitive_attrs', 1)[0].split(') cnode_attrs', 1)[0]
        return re.findall(r'Tensor\(shape=\[([\d, ]*)\]', args)

    def source(self, root):
        """The innermost source line of the project's own code (else the innermost of all)."""
        own = [s for s in self.sources if s.startswith(str(root)) and '/site-packages/' not in s]
        return (own or self.sources or ['?'])[-1]


def parse_ir(text):
    """The primitive nodes of a MindSpore IR dump (every subgraph); graph calls are left out."""
    nodes, node, in_call = [], None, False
    for line in text.splitlines():
        m = _NODE.match(line)
        if m:
            node = None
            if not m.group(1).startswith(('@', '%')):
                node = Node(m.group(1), m.group(2))
                nodes.append(node)
                in_call = True
            continue
        if node is None:
            continue
        stripped = line.strip()
        if in_call and stripped.startswith(': ('):
            in_call = False
            ins, _, outs = stripped[2:].partition(' -> ')
            node.inputs = [(d, _shape(s)) for d, s in _SHAPE.findall(ins)]
            node.outputs = [(d, _shape(s)) for d, s in _SHAPE.findall(outs)]
        elif in_call:
            node.text += ' ' + stripped  # a constant printed over several lines
        elif stripped.startswith('# Fullname with scope: ('):
            node.scope = stripped[len('# Fullname with scope: ('):-1]
        elif stripped.startswith('# In file '):
            # '# In file /path/x.py:12, 4~20/        code/' -> '/path/x.py:12: code'
            m = _SOURCE.match(stripped[len('# In file '):])
            if m:
                node.sources.append(f'{m.group(1)}:{m.group(2)}: {m.group(3).strip()}')
        elif not stripped.startswith('#'):
            node = None
    return nodes


def _shape(text):
    return tuple(int(v) for v in text.replace(' ', '').split(',') if v)


def load_allowlist(path=ALLOWLIST):
    with open(path) as f:
        allowlist = yaml.safe_load(f)
    for name, entry in allowlist.items():
        if not isinstance(entry, dict) or 'page' not in entry or 'platforms' not in entry:
            raise ValueError(f'{path}: entry {name!r} needs a page and platforms')
        unknown = set(entry.get('checks', [])) - set(CHECKS)
        if unknown:
            raise ValueError(f'{path}: entry {name!r} has unknown checks {sorted(unknown)}')
    return allowlist


# Constraint checks named by allowlist entries: node -> a violation message, or None.
def _grouped_only_depthwise(node):
    """Ascend: grouped convolution only when in_channels == out_channels == group (Conv2D page)."""
    group = node.attr('group') or node.attr('groups') or 1
    if group == 1:
        return None
    out_channels = node.attr('out_channel')
    if node.name == 'Conv2D':  # (x, weight)
        in_channels = node.inputs[0][1][1] if node.inputs else None
    elif node.name == 'Conv2DBackpropInput':  # (dout, weight, input_size): out_channel is the input's
        in_channels = node.outputs[0][1][1] if node.outputs else None
        out_channels = node.inputs[0][1][1] if node.inputs else None
    else:  # Conv2DBackpropFilter (dout, x, filter_size)
        in_channels = node.inputs[1][1][1] if len(node.inputs) > 1 else None
        out_channels = node.inputs[0][1][1] if node.inputs else None
    if in_channels == out_channels == group:
        return None
    return (f'grouped convolution that is not depthwise: group {group}, in_channels {in_channels}, '
            f'out_channels {out_channels}')


def _no_constant_operand(node):
    """A matmul or convolution with a constant operand is a data movement written as arithmetic
    (an identity or one-hot matrix): exact in fp32 on CPU, not where fp32 matmuls and convolutions
    run in reduced precision (Ascend's default precision modes, TF32 on GPU)."""
    constants = node.constant_operands()
    if constants:
        return f'constant operand of shape ({constants[0]}): an axis swap or shift written as a product'
    return None


def _gradient_only(node):
    """The public op is deprecated; the primitive may only appear as the gradient of its replacement."""
    if node.is_gradient:
        return None
    return 'used directly; its API page marks it deprecated (allowed only as a gradient from autodiff)'


CHECKS = {
    'grouped_only_depthwise': _grouped_only_depthwise,
    'no_constant_operand': _no_constant_operand,
    'gradient_only': _gradient_only,
}


def check_nodes(nodes, allowlist, target, root):
    """[(prim, message, attributes, shapes, source)] for every node that violates the allowlist on target."""
    violations = []
    for node in nodes:
        entry = allowlist.get(node.name)
        found = []
        if entry is None:
            found.append('not in the allowlist (unknown primitive)')
        else:
            if target not in entry['platforms']:
                found.append(f'its API page {entry["page"]} does not list {target}')
            for check in entry.get('checks', []):
                targets = entry.get('check_targets', {}).get(check, TARGETS)
                message = CHECKS[check](node) if target in targets else None
                if message:
                    found.append(message)
        if _INF.search(node.text):
            found.append('a constant +-inf operand or attribute')
        shapes = ', '.join(f'{d}{list(s)}' for d, s in node.inputs) + ' -> ' + ', '.join(
            f'{d}{list(s)}' for d, s in node.outputs)
        violations += [(node.prim, message, node.attributes(), shapes, node.source(root)) for message in found]
    return violations


def mindir_infinities(path):
    """Names of the constants and parameters of a MINDIR file that hold +-inf."""
    from mindspore.train import mind_ir_pb2
    model = mind_ir_pb2.ModelProto()
    with open(path, 'rb') as f:
        model.ParseFromString(f.read())
    dtypes = {mind_ir_pb2.TensorProto.FLOAT: np.float32, mind_ir_pb2.TensorProto.FLOAT16: np.float16,
              mind_ir_pb2.TensorProto.DOUBLE: np.float64}
    found = []

    def scan(tensor, where):
        dtype = dtypes.get(tensor.data_type)
        if dtype is not None and tensor.raw_data and np.isinf(np.frombuffer(tensor.raw_data, dtype)).any():
            found.append(where)

    graphs = [model.graph] + list(model.functions)
    for graph in graphs:
        for tensor in graph.parameter:
            scan(tensor, f'parameter {tensor.name}')
        for node in graph.node:
            for attribute in node.attribute:
                for tensor in list(attribute.tensors) + ([attribute.t] if attribute.t.ByteSize() else []):
                    scan(tensor, f'constant {node.name}')
    return found


AUDIT_SIZES = (32, 64, 128, 224)  # the audit builds each model at the smallest of these it takes


def _audit_config(arch, image_size, formulation='portable'):
    """The config of the audit of `arch`: its shipped config if there is one (optimizer, clipping), the
    formulation, and image_size or the smallest of AUDIT_SIZES that works unpadded. The sizes are tried
    on models built without initialising their weights (a full Swin's truncated-normal initialisation
    takes seconds)."""
    from mindspore.nn.utils import no_init_parameters

    from ..config import load_config
    from ..models import InputSizeError, build_model
    path = Path(__file__).resolve().parents[2] / 'config' / f'{arch}.yaml'
    cfg = load_config(str(path) if path.is_file() else None, {'arch': arch, 'num_classes': 10})
    cfg.model_overrides = {**cfg.model_overrides, 'formulation': formulation}
    for size in ([image_size] if image_size else AUDIT_SIZES):
        cfg.image_size = size
        try:
            with no_init_parameters():
                net = build_model(cfg)
        except InputSizeError:
            if image_size:
                raise
            continue
        # Swin takes any size, zero-padding what its windows do not divide; the automatic choice is
        # a size it takes as the official classification model does (--image_size audits the padding).
        if image_size or not getattr(net, 'padded', False):
            return cfg
    raise InputSizeError(f'{arch} takes none of the audit sizes {AUDIT_SIZES} without padding; pass --image_size')


def audited_step(cfg, graph):
    """The training step of `graph` (train_O0, train_O2) for the model of `cfg`, built by the trainer's
    factory (engine.step.build_training_step) from cfg with amp_level from the graph, weight EMA on,
    clipping on (cfg.clip_grad, else 5) and, at O2, accumulation_steps 2, over networks built
    without initialising their weights (nothing reads them). Returns (TrainingStep, one update's
    batches)."""
    from mindspore import Tensor
    from mindspore.nn.utils import no_init_parameters

    from ..config import Config
    from ..engine.step import build_training_step
    from ..models import build_model

    amp_level = graph.split('_', 1)[1]
    cfg = Config(cfg, amp_level=amp_level, ema=True, clip_grad=cfg.clip_grad or 5.0,
                 accumulation_steps=1 if amp_level == 'O0' else 2)
    with no_init_parameters():
        net, ema_net = build_model(cfg), build_model(cfg)
    net.set_train(True)
    built = build_training_step(cfg, net, np.full(4, 1e-3, np.float32), ema_net=ema_net)
    size = cfg.image_size
    images = Tensor(np.random.default_rng(0).normal(size=(2, 3, size, size)).astype(np.float32))
    targets = Tensor(np.eye(cfg.num_classes, dtype=np.float32)[[1, 2]])
    return built, [(images, targets)] * cfg.accumulation_steps


def compile_graph(cfg, graph, out_dir):
    """Build the model of `cfg` and compile one of GRAPHS: the MINDIR export of inference, or the
    training step (compiled and not run: PRECOMPILE_ENV; see audited_step). Returns the record's
    graph-specific items."""
    import mindspore as ms
    from mindspore import Tensor

    from ..models import build_model

    if graph == 'infer':  # the MINDIR holds the weights, and they are checked for infinities
        size = cfg.image_size
        images = Tensor(np.random.default_rng(0).normal(size=(2, 3, size, size)).astype(np.float32))
        net = build_model(cfg)
        net.set_train(False)
        file_name = os.path.join(out_dir, cfg.arch)
        ms.export(net, images, file_name=file_name, file_format='MINDIR')
        return {'mindir': file_name + '.mindir'}
    built, batches = audited_step(cfg, graph)
    built.step(batches)  # compiled only (PRECOMPILE_ENV)
    return {'accumulation_steps': len(batches)}


def _ir_files(folder):
    return set(glob.glob(os.path.join(folder, '**', '*.ir'), recursive=True))


def run_worker(arch, graphs, image_size, out_dir, formulation='portable'):
    """Compile `graphs` of `arch` one after another in this process, whose environment has the IR
    dump (into out_dir/ir) and precompile-only on; the IR files of each graph's compile are moved to
    out_dir/<graph>/. Prints one record per graph for the parent as it completes (a graph that fails
    to build or compile gets an error record, and the next one is tried)."""
    import mindspore as ms

    import src  # noqa: F401

    from ..engine.context import use_device

    ms.set_context(mode=ms.GRAPH_MODE)
    use_device('CPU')
    cfg = _audit_config(arch, image_size, formulation)
    dump = os.environ[DUMP_PATH_ENV]
    for graph in graphs:
        record = {'arch': arch, 'graph': graph, 'image_size': cfg.image_size}
        before, start = _ir_files(dump), time.time()
        try:
            record.update(compile_graph(cfg, graph, out_dir))
        except Exception as err:  # reported by the parent as this graph's failure
            record['error'] = f'{type(err).__name__}: {err}'.strip()[-2000:]
        record['seconds'] = time.time() - start
        folder = os.path.join(out_dir, graph)
        os.makedirs(folder)
        for path in _ir_files(dump) - before:
            os.replace(path, os.path.join(folder, os.path.basename(path)))
        print(RESULT_TAG + json.dumps(record), flush=True)


def audit(arch, graphs, args, root):
    """Compile `graphs` of `arch` in a fresh process with the IR dump on; returns [(graph, result)]
    in the order of `graphs`, result (record, nodes, mindir infinities) or a RuntimeError with the
    worker's error."""
    with tempfile.TemporaryDirectory(prefix=f'audit_{arch}_') as tmp:
        env = dict(os.environ, **DUMP_ENV, **PRECOMPILE_ENV, **{DUMP_PATH_ENV: os.path.join(tmp, 'ir')})
        cmd = [sys.executable, '-m', 'src.tools.audit_graph', '--worker', '--arch', arch, '--graphs', *graphs,
               '--out_dir', tmp, '--formulation', args.formulation]
        cmd += ['--image_size', str(args.image_size)] if args.image_size else []
        proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
        records = {}
        for line in proc.stdout.splitlines():
            if line.startswith(RESULT_TAG):
                record = json.loads(line[len(RESULT_TAG):])
                records[record['graph']] = record
        tail = [line for line in (proc.stderr or proc.stdout).strip().splitlines() if line.strip()][-6:]
        results = []
        for graph in graphs:
            record = records.get(graph)
            if record is None:
                results.append((graph, RuntimeError(f'exit code {proc.returncode}: ' + ' | '.join(tail))))
                continue
            if 'error' in record:
                results.append((graph, RuntimeError(record['error'])))
                continue
            files = sorted(glob.glob(os.path.join(tmp, graph, '*_validate_*.ir')))
            if not files:
                results.append((graph, RuntimeError(f'no *_validate_*.ir in the IR dump of {arch} {graph} '
                                                    f'(are {", ".join(DUMP_ENV)} honoured?)')))
                continue
            nodes = []
            for path in files:
                with open(path, errors='replace') as f:
                    nodes += parse_ir(f.read())
            infinities = mindir_infinities(record['mindir']) if 'mindir' in record else []
            results.append((graph, (record, nodes, infinities)))
    return results


def report(arch, graph, record, nodes, infinities, allowlist, targets, root):
    """Print the audit of one compiled graph for each target; returns how many targets have violations."""
    failed = 0
    for target in targets:
        violations = check_nodes(nodes, allowlist, target, root)
        violations += [('MINDIR', f'{where} holds +-inf', '', '', record['mindir']) for where in infinities]
        groups = {}
        for violation in violations:  # one report per primitive and reason, with its first node
            groups.setdefault(violation[:2], []).append(violation)
        status = 'ok' if not groups else f'{len(violations)} violation(s)'
        accumulation = record.get('accumulation_steps', 1)
        label = f'{graph} x{accumulation}' if accumulation > 1 else graph
        print(f'{arch} {label} ({record["image_size"]} px, {record["seconds"]:.0f} s) {target}: '
              f'{len(nodes)} primitive nodes, {len({n.name for n in nodes})} primitives, {status}', flush=True)
        for (prim, message), found in groups.items():
            _, _, attrs, shapes, source = found[0]
            more = f' (and {len(found) - 1} more nodes)' if len(found) > 1 else ''
            print(f'  {prim}: {message}{more}\n    attributes {attrs or "{}"}\n    shapes {shapes}\n'
                  f'    at {source}', flush=True)
        failed += bool(groups)
    return failed


def main(argv=None):
    parser = ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--arch', nargs='+', required=True, help="registered model names, or 'all'")
    parser.add_argument('--target', nargs='+', default=list(TARGETS), choices=TARGETS)
    parser.add_argument('--graphs', nargs='+', default=list(GRAPHS), choices=GRAPHS)
    parser.add_argument('--image_size', type=int, default=None,
                        help="input size (default: the model's config, or 224 / the mini models' own)")
    parser.add_argument('--allowlist', default=str(ALLOWLIST))
    parser.add_argument('--formulation', default='portable', choices=('portable', 'cpu'),
                        help='the formulation to build: portable (what devices run) or cpu (to see what '
                             'the CPU formulation would break)')
    parser.add_argument('--jobs', type=int, default=1, help='models compiled at the same time (one process each)')
    parser.add_argument('--worker', action='store_true', help=argparse.SUPPRESS)
    parser.add_argument('--out_dir', default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    graphs = list(dict.fromkeys(args.graphs))
    if args.worker:
        run_worker(args.arch[0], graphs, args.image_size, args.out_dir, args.formulation)
        return 0

    from ..models import list_models
    archs = list_models() if args.arch == ['all'] else args.arch
    unknown = [a for a in archs if a not in list_models()]
    if unknown:
        parser.error(f'unknown model(s) {", ".join(unknown)}; available: {", ".join(list_models())}')
    allowlist = load_allowlist(args.allowlist)
    root = Path(__file__).resolve().parents[2]

    failed = 0
    # One process per model compiles its graphs one after another, mostly on one core: --jobs runs
    # several models side by side.
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for arch, results in zip(archs, pool.map(lambda arch: audit(arch, graphs, args, root), archs)):
            for graph, result in results:
                if isinstance(result, RuntimeError):
                    print(f'FAILED {arch} {graph}: the graph did not compile: {result}', flush=True)
                    failed += 1
                    continue
                failed += report(arch, graph, *result, allowlist, args.target, root)
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(run_main(main))
