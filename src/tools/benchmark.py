"""Speed and peak memory of models in graph mode, each (arch, mode) in a fresh process.

    python -m src.tools.benchmark --arch acmix_swin_tiny swin_tiny --mode infer train \\
        --batch_size 8 --image_size 224 [--device_target CPU] [--formulation cpu|portable] [--steps 5] \\
        [--rounds 3] [--threads 2] [--official] [--mindcv] [--json out.json]

Each run builds the model, compiles and runs `--warmup` steps, then times `--steps` steps and
reports the median. compile_s is graph compilation alone, the time between MindSpore's own "Start
compiling" and "End compiling" events (INFO messages of its PIPELINE log module, which the worker
process is started with); first_step_s is the whole first call, compilation plus a first execution
that is slower than the later ones (memory is allocated and first touched). Peak memory is the
process's maximum resident set size, so every (arch, mode) runs in its own process. Absolute times
vary between runs and machines; compare architectures side by side in one run (with --rounds the
runs are interleaved and medians reported), and the printed acmix_X / X ratios do that. Within a
round the models run mode by mode, so an ACmix model listed next to its plain twin runs back to back
with it; with several rounds the ratio lines also give the spread of these per-round ratios.

--official also times the official formulation in PyTorch (the test-only re-implementation
src/tools/official_reference.py; needs torch, CPU only) of each listed model that has one, as
`official:<arch>` in a fresh process of its own, right after our model in the same mode, and prints
<arch> / official:<arch> throughput ratios (above 1: ours is faster). Every worker uses --threads
threads: MindSpore's CPU kernels and the ACmix C++ kernels, or PyTorch's intra-op pool. A PyTorch
run has no graph to compile: its compile_s is None, and its peak memory, like ours, includes the
framework's own libraries.

--mindcv also times mindcv's model of the same architecture where it has one (MINDCV_MODELS: its plain
Swin-T), as `mindcv:<arch>` right after ours: the same framework, device set-up, inputs and training
step (needs the package mindcv), and prints <arch> / mindcv:<arch> ratios.
"""
import argparse
import importlib.util
import json
import os
import re
import resource
import subprocess
import sys
import time
from datetime import datetime

from src.cli import run_main
from src.errors import ArgumentParser, UserError
from src.fileio import write_text

RESULT_TAG = 'BENCHMARK_RESULT '
KEYS = ('arch', 'mode', 'batch_size', 'image_size', 'compile_s', 'first_step_s', 'step_s', 'images_per_s',
        'peak_rss_gb')
# MindSpore's log line of a compile event, e.g. "[INFO] PIPELINE(..):2026-11-21-23:15:09.750.671 [..]
# PrintEventMessage] Start compiling 'step' and it will take a while...", time in ms and us fields
COMPILE_EVENT = re.compile(r'(\d{4}-\d\d-\d\d-\d\d:\d\d:\d\d)\.(\d{3})\.(\d{3}) '
                           r'.*PrintEventMessage\] (Start|End) compiling ')
# Worker environment that makes MindSpore log those events (and only its PIPELINE module at INFO) to stderr
COMPILE_LOG_ENV = {'MS_SUBMODULE_LOG_v': '{PIPELINE:1}', 'GLOG_logtostderr': '1'}
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OFFICIAL_PREFIX = 'official:'
MINDCV_PREFIX = 'mindcv:'
# arch -> mindcv's model of that architecture (mindcv.models.create_model name), built with its defaults
MINDCV_MODELS = {'swin_tiny': 'swin_tiny'}
MINDCV_IMAGE_SIZE = 224  # mindcv's swin_tiny fixes its input size (and relative-position tables) to 224
# The constructor arguments of the official builders (src/tools/official_reference.py) our models' own
# settings map to; drop_path_rate included, so that training does the same work.
_OFFICIAL_SWIN_ARGS = ('acmix', 'patch_size', 'embed_dim', 'depths', 'num_heads', 'window_size', 'drop_path_rate')


def official_model(arch):
    """(builder in src/tools/official_reference.py, its arguments) for the official formulation of
    `arch`, from the settings the registry builds it with; None for a model the official code has not
    (the ResNet minis: their 'small' stem is not in the official ResNet)."""
    from ..models import model_settings
    settings = model_settings(arch)
    if 'depths' in settings:
        return 'swin', {k: settings[k] for k in _OFFICIAL_SWIN_ARGS if k in settings}
    if settings.get('stem', 'imagenet') != 'imagenet' or settings.get('base_channels', 64) != 64:
        return None
    return ('acmix_resnet' if settings['acmix'] else 'resnet_plain'), {'layers': list(settings['layers'])}


def official_models():
    """The registered models that have an official formulation to measure beside them."""
    from ..models import list_models
    return [arch for arch in list_models() if official_model(arch) is not None]


def run_one(arch, mode, batch_size, image_size, device_target, warmup, steps, formulation=None, threads=None):
    """Measure one (arch, mode) in this process; returns a record with KEYS, compile_s None: the
    parent process reads it from this process's log (compile_seconds). threads: of MindSpore's CPU
    kernels (None: its default); the ACmix C++ kernels read theirs from ACMIX_KERNEL_THREADS. An arch
    mindcv:<arch> is mindcv's model MINDCV_MODELS[arch], in the same set-up."""
    import mindspore as ms
    import numpy as np
    from mindspore import Tensor

    import src  # noqa: F401
    from src.config import load_config
    from src.engine.context import use_device
    from src.engine.step import build_training_step
    from src.models import create_model, size_overrides

    ms.set_context(mode=ms.GRAPH_MODE)
    use_device(device_target)
    if threads:
        ms.device_context.cpu.op_tuning.threads_num(threads)
    if arch.startswith(MINDCV_PREFIX):
        from mindcv.models import create_model as create_mindcv_model
        net = create_mindcv_model(MINDCV_MODELS[arch[len(MINDCV_PREFIX):]], num_classes=1000)
    else:
        net = create_model(arch, num_classes=1000, formulation=formulation, **size_overrides(arch, image_size))
    images = Tensor(np.random.default_rng(0).normal(size=(batch_size, 3, image_size, image_size)).astype(np.float32))
    targets = Tensor(np.eye(1000, dtype=np.float32)[np.arange(batch_size) % 1000])
    if mode == 'infer':
        net.set_train(False)

        def step():
            return net(images)
    else:
        net.set_train(True)
        # the trainer's step (build_training_step) in fp32 with SGD and momentum, no weight decay, no
        # clipping: what the official models' PyTorch step (--official) does too
        cfg = load_config(None, {'optimizer': 'sgd', 'momentum': 0.9, 'weight_decay': 0.0, 'amp_level': 'O0',
                                 'clip_grad': None, 'ema': False, 'accumulation_steps': 1})
        # one lr per call of step (the table is indexed by the update count)
        train_step = build_training_step(cfg, net, np.full(warmup + steps, 1e-3, np.float32)).step

        def step():
            loss, _, _ = train_step([(images, targets)])
            return loss

    # asnumpy waits for the device
    return _measure(arch, mode, batch_size, image_size, lambda: step().asnumpy(), warmup, steps)


def _measure(arch, mode, batch_size, image_size, step, warmup, steps):
    """Times step() as both workers do: the first call, warmup - 1 more untimed, then the median of
    `steps`; a record with KEYS, compile_s None."""
    import numpy as np

    def timed():
        start = time.perf_counter()
        step()
        return time.perf_counter() - start

    first_step_s = timed()
    for _ in range(max(0, warmup - 1)):
        timed()
    step_s = float(np.median([timed() for _ in range(steps)]))
    peak_rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2  # KiB on Linux
    return dict(arch=arch, mode=mode, batch_size=batch_size, image_size=image_size,
                compile_s=None, first_step_s=round(first_step_s, 3), step_s=round(step_s, 4),
                images_per_s=round(batch_size / step_s, 3), peak_rss_gb=round(peak_rss_gb, 3))


def build_official(arch, image_size):
    """The PyTorch model of src/tools/official_reference.py that `arch` reproduces, for square inputs
    of `image_size`. Imported here, in the official worker only: without --official torch is not
    needed."""
    from src.tools import official_reference as reference
    builder, kwargs = official_model(arch)
    if builder == 'swin':
        kwargs = dict(kwargs, img_size=image_size)
    return getattr(reference, builder)(num_classes=1000, **kwargs)


def run_official(arch, mode, batch_size, image_size, warmup, steps, threads):
    """Measure the official formulation of `arch` (PyTorch, CPU, eager) in this process, with the
    same inputs and timing as run_one; the record's arch is official:<arch>. Training is run_one's
    step in PyTorch: forward, cross-entropy, backward and an SGD update with momentum 0.9, no weight
    decay (the update nn.Momentum computes). What differs is the framework's way: PyTorch runs
    eagerly, op by op, and allocates the gradients anew each step (zero_grad sets them to None)."""
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_official(arch, image_size)
    images = torch.from_numpy(
        np.random.default_rng(0).normal(size=(batch_size, 3, image_size, image_size)).astype(np.float32))
    labels = torch.arange(batch_size) % 1000
    if mode == 'infer':
        model.eval()

        def step():
            with torch.no_grad():
                model(images)
    else:
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        loss_fn = torch.nn.CrossEntropyLoss()

        def step():
            opt.zero_grad()
            loss_fn(model(images), labels).backward()
            opt.step()

    return _measure(OFFICIAL_PREFIX + arch, mode, batch_size, image_size, step, warmup, steps)


def compile_seconds(log):
    """Seconds spent in graph compilation according to the compile events in a MindSpore log
    (nested compiles counted once), or None if the log has no complete one."""
    total, depth, start = 0.0, 0, None
    for m in COMPILE_EVENT.finditer(log):
        # naive datetimes, subtracted: the log's local time never goes through a time zone
        t = datetime.strptime(f'{m[1]}.{m[2]}{m[3]}', '%Y-%m-%d-%H:%M:%S.%f')
        if m[4] == 'Start':
            depth += 1
            if depth == 1:
                start = t
        elif depth:
            depth -= 1
            if depth == 0:
                total += (t - start).total_seconds()
    return round(total, 3) if start is not None and depth == 0 else None


def run_isolated(arch, mode, args):
    """Run one measurement (official:<arch> for the official formulation) in a fresh interpreter;
    returns its record or an error record."""
    cmd = [sys.executable, '-m', 'src.tools.benchmark', '--worker', '--arch', arch, '--mode', mode,
           '--batch_size', str(args.batch_size), '--image_size', str(args.image_size),
           '--device_target', args.device_target, '--warmup', str(args.warmup), '--steps', str(args.steps),
           '--threads', str(args.threads)]
    if args.formulation:
        cmd += ['--formulation', args.formulation]
    env = dict(os.environ, **COMPILE_LOG_ENV, ACMIX_KERNEL_THREADS=str(args.threads))
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            record = json.loads(line[len(RESULT_TAG):])
            if arch.startswith(OFFICIAL_PREFIX):
                return record  # nothing compiled
            record['compile_s'] = compile_seconds(proc.stderr)
            if record['compile_s'] is None:
                print(f'[benchmark] no compile events in the log of {arch} {mode}: compile_s is the first '
                      f'step\'s time', file=sys.stderr, flush=True)
                record['compile_s'] = record['first_step_s']
            return record
    tail = [line for line in (proc.stderr or proc.stdout).strip().splitlines()
            if not line.startswith('[INFO]')][-5:]
    reason = 'killed (out of memory?)' if proc.returncode in (-9, 137) else f'exit code {proc.returncode}'
    return dict(arch=arch, mode=mode, batch_size=args.batch_size, image_size=args.image_size,
                error=reason + ': ' + ' | '.join(tail))


def format_table(records):
    width = max([20] + [len(r['arch']) for r in records])
    head = (f'{"arch":<{width}} {"mode":<6} {"batch":>5} {"size":>5} {"compile_s":>10} {"first_s":>8} {"step_s":>8} '
            f'{"img/s":>8} {"peak_GB":>8}')
    rows = [head, '-' * len(head)]
    for r in records:
        if 'error' in r:
            rows.append(f'{r["arch"]:<{width}} {r["mode"]:<6} {r["batch_size"]:>5} {r["image_size"]:>5}  '
                        f'FAILED: {r["error"]}')
        else:
            compile_s = '-' if r['compile_s'] is None else f'{r["compile_s"]:.1f}'
            rows.append(f'{r["arch"]:<{width}} {r["mode"]:<6} {r["batch_size"]:>5} {r["image_size"]:>5} '
                        f'{compile_s:>10} {r["first_step_s"]:>8.1f} {r["step_s"]:>8.3f} '
                        f'{r["images_per_s"]:>8.2f} {r["peak_rss_gb"]:>8.2f}')
    return '\n'.join(rows)


def _measured(records):
    """{(arch, mode): record} of the records that did not fail."""
    return {(r['arch'], r['mode']): r for r in records if 'error' not in r}


def _partners(arch):
    """What a record of `arch` is compared with: (partner arch, the measure, the record's ratio to
    the partner's in it)."""
    if arch.startswith((OFFICIAL_PREFIX, MINDCV_PREFIX)):
        return []
    partners = []
    if arch.startswith('acmix_'):
        partners.append((arch[len('acmix_'):], 'step time', lambda r, p: r['step_s'] / p['step_s']))
    # throughput, so that above 1 reads as "ours is faster"
    partners.append((OFFICIAL_PREFIX + arch, 'throughput', lambda r, p: p['step_s'] / r['step_s']))
    partners.append((MINDCV_PREFIX + arch, 'throughput', lambda r, p: p['step_s'] / r['step_s']))
    return partners


def format_ratios(records, rounds=()):
    """Ratio lines of the pairs measured in the same run: 'acmix_X / X' (step time and peak memory
    of each ACmix model to its plain twin) and '<arch> / official:<arch>' (throughput and peak
    memory of our model to the official formulation). With several rounds (the per-round record
    lists), each line also gives the range and median of the per-round ratios: a pair of a round ran
    back to back, so these are the ones least affected by the machine's speed drifting between rounds."""
    import numpy as np
    found = _measured(records)
    per_round = [_measured(records_of_round) for records_of_round in rounds]
    lines = []
    for (arch, mode), r in found.items():
        for partner, measure, ratio in _partners(arch):
            p = found.get((partner, mode))
            if not p:
                continue
            line = (f'{arch} / {partner} {mode}: {measure} x{ratio(r, p):.2f}, '
                    f'peak memory x{r["peak_rss_gb"] / p["peak_rss_gb"]:.2f}')
            paired = [ratio(got[(arch, mode)], got[(partner, mode)]) for got in per_round
                      if (arch, mode) in got and (partner, mode) in got]
            if len(paired) > 1:
                line += (f'; per-round {measure} x{min(paired):.2f} to x{max(paired):.2f}, '
                         f'median x{float(np.median(paired)):.2f}')
            lines.append(line)
    return '\n'.join(lines)


def combine_rounds(rounds):
    """Records of the same (arch, mode) from several rounds -> one: median step, compile and first
    step time, largest peak memory; failures are kept as they are."""
    import numpy as np
    merged = []
    for group in zip(*rounds):
        ok = [r for r in group if 'error' not in r]
        if len(ok) < len(group):
            merged.append(next(r for r in group if 'error' in r))
            continue
        record = dict(ok[0])
        record['step_s'] = round(float(np.median([r['step_s'] for r in ok])), 4)
        for key in ('compile_s', 'first_step_s'):
            values = [r[key] for r in ok]
            record[key] = None if None in values else round(float(np.median(values)), 3)
        record['images_per_s'] = round(record['batch_size'] / record['step_s'], 3)
        record['peak_rss_gb'] = max(r['peak_rss_gb'] for r in ok)
        merged.append(record)
    return merged


def check_official(archs, device_target):
    """The archs of `archs` whose official formulation --official times, in their order; a
    UserError, before anything runs, when it cannot time any."""
    if importlib.util.find_spec('torch') is None:
        raise UserError('--official times the official formulation in PyTorch, which is not installed '
                        '(pip install torch==2.13.0)')
    if device_target != 'CPU':
        raise UserError('--official times PyTorch on CPU only; use it with --device_target CPU')
    available = official_models()
    with_official = [a for a in archs if a in available]
    if not with_official:
        raise UserError(f'--official: none of {", ".join(archs)} has an official formulation to time; '
                        f'these do: {", ".join(available)}')
    without = [a for a in archs if a not in available]
    if without:
        print(f'[benchmark] no official formulation of {", ".join(without)}; --official times it for '
              f'{", ".join(available)}', file=sys.stderr, flush=True)
    return with_official


def check_mindcv(archs, image_size):
    """The archs of `archs` that --mindcv times mindcv's model of, in their order; a UserError, before
    anything runs, when it cannot time any."""
    if image_size != MINDCV_IMAGE_SIZE:
        raise UserError(f'--mindcv: mindcv\'s models are built for {MINDCV_IMAGE_SIZE} px inputs, '
                        f'not --image_size {image_size}')
    if importlib.util.find_spec('mindcv') is None:
        raise UserError('--mindcv times models of the package mindcv, which is not installed '
                        '(pip install mindcv==0.3.0 tqdm)')
    with_mindcv = [a for a in archs if a in MINDCV_MODELS]
    if not with_mindcv:
        raise UserError(f'--mindcv: none of {", ".join(archs)} has a mindcv model to time; these do: '
                        f'{", ".join(MINDCV_MODELS)}')
    return with_mindcv


def main(argv=None):
    parser = ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--arch', nargs='+', required=True)
    parser.add_argument('--mode', nargs='+', default=['infer'], choices=['infer', 'train'])
    parser.add_argument('--batch_size', type=int, default=8)
    parser.add_argument('--image_size', type=int, default=224)
    parser.add_argument('--device_target', default='CPU', choices=['CPU', 'GPU', 'Ascend'])
    parser.add_argument('--formulation', default=None, choices=['cpu', 'portable'],
                        help=('of the ACmix layers and Swin DropPath '
                              '(default: the device target decides, src/layers/formulation.py)'))
    parser.add_argument('--warmup', type=int, default=2,
                        help='untimed steps; the first (first_step_s) includes compilation')
    parser.add_argument('--steps', type=int, default=5, help='timed steps; the median is reported')
    parser.add_argument('--rounds', type=int, default=1,
                        help='measure every (arch, mode) this many times, interleaved, and report medians: '
                             'other load on the machine then affects all models alike')
    parser.add_argument('--threads', type=int, default=None,
                        help='threads of every worker: of MindSpore\'s CPU kernels and the ACmix C++ kernels '
                             '(ACMIX_KERNEL_THREADS), or of PyTorch (default: the CPUs this process may use)')
    parser.add_argument('--official', action='store_true',
                        help='also time the official formulation in PyTorch, src/tools/official_reference.py, of each '
                             'model that has one (needs torch; CPU only)')
    parser.add_argument('--mindcv', action='store_true',
                        help='also time mindcv\'s model of each listed architecture that has one '
                             f'({", ".join(MINDCV_MODELS)}; needs mindcv)')
    parser.add_argument('--json', default=None, help='write the records to this file')
    parser.add_argument('--worker', action='store_true', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.warmup < 1 or args.steps < 1 or args.rounds < 1:
        parser.error('--warmup, --steps and --rounds must be at least 1')
    if args.threads is None:
        args.threads = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count() or 1
    elif args.threads < 1:
        parser.error('--threads must be at least 1')

    if args.worker:
        arch = args.arch[0]
        if arch.startswith(OFFICIAL_PREFIX):
            record = run_official(arch[len(OFFICIAL_PREFIX):], args.mode[0], args.batch_size, args.image_size,
                                  args.warmup, args.steps, args.threads)
        else:
            record = run_one(arch, args.mode[0], args.batch_size, args.image_size, args.device_target,
                             args.warmup, args.steps, args.formulation, args.threads)
        print(RESULT_TAG + json.dumps(record), flush=True)
        return 0

    from src.models import list_models
    unknown = [a for a in args.arch if a not in list_models()]
    if unknown:
        parser.error(f'unknown model(s) {", ".join(unknown)}; available: {", ".join(list_models())}')
    with_official = check_official(args.arch, args.device_target) if args.official else []
    with_mindcv = check_mindcv(args.arch, args.image_size) if args.mindcv else []
    names = [name for arch in args.arch
             for name in [arch] + ([OFFICIAL_PREFIX + arch] if arch in with_official else [])
             + ([MINDCV_PREFIX + arch] if arch in with_mindcv else [])]
    rounds = []
    for round_index in range(args.rounds):
        # Mode by mode, so that an ACmix model and its plain twin run back to back in the same mode
        # (the machine's speed drifts over minutes), each followed by its official formulation and
        # mindcv's model; the records keep the arch-by-arch order.
        measured = {}
        for mode in args.mode:
            for name in names:
                print(f'[benchmark] round {round_index + 1}/{args.rounds}: {name} {mode} batch {args.batch_size} '
                      f'at {args.image_size}px ...', file=sys.stderr, flush=True)
                measured[(name, mode)] = run_isolated(name, mode, args)
        rounds.append([measured[(name, mode)] for name in names for mode in args.mode])
    records = combine_rounds(rounds)
    print(f'threads per worker: {args.threads} (MindSpore CPU kernels and ACmix C++ kernels'
          + ('; PyTorch for official:*)' if with_official else ')'))
    print(format_table(records))
    ratios = format_ratios(records, rounds)
    if ratios:
        print(ratios)
    if args.json:
        write_text(args.json, json.dumps(records, indent=2))
    return 1 if any('error' in r for r in records) else 0


if __name__ == '__main__':
    sys.exit(run_main(main))
