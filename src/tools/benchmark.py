"""Speed and peak memory of models in graph mode, each (arch, mode) in a fresh process.

    python -m src.tools.benchmark --arch acmix_swin_tiny swin_tiny --mode infer train \\
        --batch_size 8 --image_size 224 [--device_target CPU] [--formulation cpu|portable] [--steps 5] \
        [--rounds 3] [--json out.json]

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
"""
import argparse
import json
import os
import re
import resource
import subprocess
import sys
import time
from datetime import datetime

from src.errors import ArgumentParser
from src.fileio import write_text
from src.tools.cli import run_main

RESULT_TAG = 'BENCHMARK_RESULT '
KEYS = ('arch', 'mode', 'batch_size', 'image_size', 'compile_s', 'first_step_s', 'step_s', 'images_per_s',
        'peak_rss_gb')
# MindSpore's log line of a compile event, e.g. "[INFO] PIPELINE(..):2026-11-21-23:15:09.750.671 [..]
# PrintEventMessage] Start compiling 'step' and it will take a while...", time in ms and us fields
COMPILE_EVENT = re.compile(r'(\d{4}-\d\d-\d\d-\d\d:\d\d:\d\d)\.(\d{3})\.(\d{3}) '
                           r'.*PrintEventMessage\] (Start|End) compiling ')
# Worker environment that makes MindSpore log those events (and only its PIPELINE module at INFO) to stderr
COMPILE_LOG_ENV = {'MS_SUBMODULE_LOG_v': '{PIPELINE:1}', 'GLOG_logtostderr': '1'}


def run_one(arch, mode, batch_size, image_size, device_target, warmup, steps, formulation=None):
    """Measure one (arch, mode) in this process; returns a record with KEYS, compile_s None: the
    parent process reads it from this process's log (compile_seconds)."""
    import mindspore as ms
    import numpy as np
    from mindspore import Tensor, nn

    import src  # noqa: F401
    from src.engine.train_step import make_train_step
    from src.models import create_model, size_overrides

    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device(device_target)
    net = create_model(arch, num_classes=1000, formulation=formulation, **size_overrides(arch, image_size))
    images = Tensor(np.random.default_rng(0).normal(size=(batch_size, 3, image_size, image_size)).astype(np.float32))
    labels = Tensor(np.arange(batch_size, dtype=np.int32) % 1000)
    if mode == 'infer':
        net.set_train(False)

        def step():
            return net(images)
    else:
        net.set_train(True)
        opt = nn.Momentum(net.trainable_params(), learning_rate=1e-3, momentum=0.9)
        train_step = make_train_step(net, nn.CrossEntropyLoss(), opt)

        def step():
            loss, _, _ = train_step([(images, labels)])
            return loss

    def timed():
        start = time.perf_counter()
        step().asnumpy()  # waits for the device
        return time.perf_counter() - start

    first_step_s = timed()
    for _ in range(max(0, warmup - 1)):
        timed()
    step_s = float(np.median([timed() for _ in range(steps)]))
    peak_rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2  # KiB on Linux
    return dict(arch=arch, mode=mode, batch_size=batch_size, image_size=image_size,
                compile_s=None, first_step_s=round(first_step_s, 3), step_s=round(step_s, 4),
                images_per_s=round(batch_size / step_s, 3), peak_rss_gb=round(peak_rss_gb, 3))


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
    """Run one measurement in a fresh interpreter; returns its record or an error record."""
    cmd = [sys.executable, '-m', 'src.tools.benchmark', '--worker', '--arch', arch, '--mode', mode,
           '--batch_size', str(args.batch_size), '--image_size', str(args.image_size),
           '--device_target', args.device_target, '--warmup', str(args.warmup), '--steps', str(args.steps)]
    if args.formulation:
        cmd += ['--formulation', args.formulation]
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, env=dict(os.environ, **COMPILE_LOG_ENV))
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            record = json.loads(line[len(RESULT_TAG):])
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
    head = (f'{"arch":<20} {"mode":<6} {"batch":>5} {"size":>5} {"compile_s":>10} {"first_s":>8} {"step_s":>8} '
            f'{"img/s":>8} {"peak_GB":>8}')
    rows = [head, '-' * len(head)]
    for r in records:
        if 'error' in r:
            rows.append(f'{r["arch"]:<20} {r["mode"]:<6} {r["batch_size"]:>5} {r["image_size"]:>5}  '
                        f'FAILED: {r["error"]}')
        else:
            rows.append(f'{r["arch"]:<20} {r["mode"]:<6} {r["batch_size"]:>5} {r["image_size"]:>5} '
                        f'{r["compile_s"]:>10.1f} {r["first_step_s"]:>8.1f} {r["step_s"]:>8.3f} '
                        f'{r["images_per_s"]:>8.2f} {r["peak_rss_gb"]:>8.2f}')
    return '\n'.join(rows)


def _measured(records):
    """{(arch, mode): record} of the records that did not fail."""
    return {(r['arch'], r['mode']): r for r in records if 'error' not in r}


def format_ratios(records, rounds=()):
    """'acmix_X / X' lines: step-time and peak-memory ratios of each ACmix model to its plain twin
    measured in the same run. With several rounds (the per-round record lists), each line also gives
    the range and median of the per-round step-time ratios: the twins of a round ran back to back, so
    these pairs are the ones least affected by the machine's speed drifting between rounds."""
    import numpy as np
    found = _measured(records)
    per_round = [_measured(records_of_round) for records_of_round in rounds]
    lines = []
    for (arch, mode), r in found.items():
        plain = found.get((arch[len('acmix_'):], mode)) if arch.startswith('acmix_') else None
        if not plain:
            continue
        line = (f'{arch} / {plain["arch"]} {mode}: step time x{r["step_s"] / plain["step_s"]:.2f}, '
                f'peak memory x{r["peak_rss_gb"] / plain["peak_rss_gb"]:.2f}')
        paired = [got[(arch, mode)]['step_s'] / got[(plain['arch'], mode)]['step_s'] for got in per_round
                  if (arch, mode) in got and (plain['arch'], mode) in got]
        if len(paired) > 1:
            line += (f'; per-round step time x{min(paired):.2f} to x{max(paired):.2f}, '
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
            record[key] = round(float(np.median([r[key] for r in ok])), 3)
        record['images_per_s'] = round(record['batch_size'] / record['step_s'], 3)
        record['peak_rss_gb'] = max(r['peak_rss_gb'] for r in ok)
        merged.append(record)
    return merged


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
    parser.add_argument('--json', default=None, help='write the records to this file')
    parser.add_argument('--worker', action='store_true', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.warmup < 1 or args.steps < 1 or args.rounds < 1:
        parser.error('--warmup, --steps and --rounds must be at least 1')

    if args.worker:
        record = run_one(args.arch[0], args.mode[0], args.batch_size, args.image_size, args.device_target,
                         args.warmup, args.steps, args.formulation)
        print(RESULT_TAG + json.dumps(record), flush=True)
        return 0

    from src.models import list_models
    unknown = [a for a in args.arch if a not in list_models()]
    if unknown:
        parser.error(f'unknown model(s) {", ".join(unknown)}; available: {", ".join(list_models())}')
    rounds = []
    for round_index in range(args.rounds):
        # Mode by mode, so that an ACmix model and its plain twin run back to back in the same mode
        # (the machine's speed drifts over minutes); the records keep the arch-by-arch order.
        measured = {}
        for mode in args.mode:
            for arch in args.arch:
                print(f'[benchmark] round {round_index + 1}/{args.rounds}: {arch} {mode} batch {args.batch_size} '
                      f'at {args.image_size}px ...', file=sys.stderr, flush=True)
                measured[(arch, mode)] = run_isolated(arch, mode, args)
        rounds.append([measured[(arch, mode)] for arch in args.arch for mode in args.mode])
    records = combine_rounds(rounds)
    print(format_table(records))
    ratios = format_ratios(records, rounds)
    if ratios:
        print(ratios)
    if args.json:
        write_text(args.json, json.dumps(records, indent=2))
    return 1 if any('error' in r for r in records) else 0


if __name__ == '__main__':
    sys.exit(run_main(main))
