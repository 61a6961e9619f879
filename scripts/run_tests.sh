#!/usr/bin/env bash
# Set up (first run) and run the test suite on CPU in graph mode.
#   bash scripts/run_tests.sh [--fast] [pytest arguments, test files or folders (default: tests)]
# --fast: the developer's inner loop, the tests not marked slow (layers against their NumPy and
# official references, config, errors, the mini models); CI runs everything.
# PYTHON=/path/to/python uses that interpreter when it already has mindspore; otherwise .venv is
# created. Installed into .venv for the tests: torch (the parity tests against the official
# formulation), torchvision (the official evaluation input), timm 0.3.2 (the official Swin lr
# scheduler) and mindcv (the benchmark's comparison with its Swin-T). ACMIX_TEST_TORCH=0 skips the
# first three, and the tests that need them are reported as skipped.
# The tests run in ACMIX_TEST_WORKERS processes (pytest-xdist; default: one per CPU, at most one
# per 8 GB of memory), or as -n asks; in one process when that is 1 or pytest-xdist is missing.
# First `ruff check` (pyproject.toml) over the whole tree: a violation fails the run before any test.
# ruff is installed into .venv; a $PYTHON without it skips the lint with a warning.
set -euo pipefail
source "$(dirname "$0")/env.sh"
acmix_python
if [ "${ACMIX_TEST_TORCH:-1}" = 1 ]; then
    acmix_optional torch==2.13.0 torchvision==0.28.0 timm==0.3.2
fi
acmix_optional matplotlib ruff==0.17.6 pytest-xdist==3.8.0
acmix_optional mindcv==0.3.0 tqdm  # apart: a failure here leaves the lint and plots installed
cd "$ACMIX_ROOT"
if "$PY" -m ruff --version >/dev/null 2>&1; then
    "$PY" -m ruff check --quiet . || { echo "error: ruff check found the violations above" >&2; exit 1; }
elif [ "$ACMIX_OWN_VENV" = 1 ]; then
    echo "error: ruff could not be installed into $ACMIX_ROOT/.venv; the lint cannot run" >&2
    exit 1
else
    echo "warning: $PY has no ruff (pip install ruff==0.17.6); lint skipped" >&2
fi
# faulthandler: a test stuck for 15 min prints every thread's stack (once MindSpore's dataset
# teardown was seen to deadlock under heavy CPU load; not reproduced since).
# The whole suite, unless an argument names test files or folders: pytest would run both.
targets=(tests)
args=()
workers=${ACMIX_TEST_WORKERS:-}
for arg in "$@"; do
    case "$arg" in
        --fast) args+=(-m "not slow"); continue ;;
        -n*|--numprocesses*) workers=1 ;;  # the caller's own choice of workers
    esac
    args+=("$arg")
    case "$arg" in -*) continue ;; esac
    if [ -e "${arg%%::*}" ]; then targets=(); fi
done
if [ -z "$workers" ]; then
    memory_gb=$(awk '/^MemTotal:/ {print int($2 / 1048576)}' /proc/meminfo 2>/dev/null || echo 8)
    workers=$(nproc 2>/dev/null || echo 1)
    [ "$workers" -le $((memory_gb / 8)) ] || workers=$((memory_gb / 8))
    [ "$workers" -ge 1 ] || workers=1
fi
if [ "$workers" -gt 1 ] && "$PY" -c "import xdist" >/dev/null 2>&1; then
    # worksteal: a worker that runs out of tests takes some of the other's (the slowest tests differ
    # by two orders of magnitude)
    args=(-n "$workers" --dist worksteal "${args[@]+"${args[@]}"}")
fi
exec "$PY" -m pytest ${targets[@]+"${targets[@]}"} -q -p no:cacheprovider -o faulthandler_timeout=900 --durations=5 \
    ${args[@]+"${args[@]}"}
