#!/usr/bin/env bash
# Set up (first run) and run the test suite on CPU in graph mode.
#   bash scripts/run_tests.sh [pytest arguments, test files or folders (default: tests)]
# PYTHON=/path/to/python uses that interpreter when it already has mindspore; otherwise .venv is
# created. torch is installed into .venv for the parity tests against the official formulation
# (set ACMIX_TEST_TORCH=0 to skip it; those tests are then reported as skipped), and mindcv for the
# benchmark's comparison with mindcv's Swin-T.
# First `ruff check` (pyproject.toml) over the whole tree: a violation fails the run before any test.
# ruff is installed into .venv; a $PYTHON without it skips the lint with a warning.
set -euo pipefail
source "$(dirname "$0")/env.sh"
acmix_python
if [ "${ACMIX_TEST_TORCH:-1}" = 1 ]; then
    acmix_optional torch==2.13.0
fi
acmix_optional matplotlib ruff==0.17.6
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
for arg in "$@"; do
    case "$arg" in -*) continue ;; esac
    if [ -e "${arg%%::*}" ]; then targets=(); break; fi
done
exec "$PY" -m pytest ${targets[@]+"${targets[@]}"} -q -p no:cacheprovider -o faulthandler_timeout=900 --durations=5 "$@"
