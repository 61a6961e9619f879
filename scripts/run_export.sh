#!/usr/bin/env bash
# Export a checkpoint to MINDIR (default), ONNX or AIR.
#   bash scripts/run_export.sh CONFIG_PATH CHECKPOINT_PATH [MINDIR|ONNX|AIR] [DEVICE_TARGET] [--key value ...]
set -euo pipefail
source "$(dirname "$0")/env.sh"
acmix_need_args $# 'CONFIG_PATH CHECKPOINT_PATH' \
    "Usage: bash $0 CONFIG_PATH CHECKPOINT_PATH [MINDIR|ONNX|AIR] [Ascend|GPU|CPU] [--key value ...]"
acmix_python
CONFIG=$(realpath "$1"); CKPT=$(realpath "$2"); shift 2
EXTRA=()
if [ $# -gt 0 ] && [[ "$1" =~ ^(MINDIR|ONNX|AIR)$ ]]; then EXTRA+=(--file_format "$1"); shift; fi
if [ $# -gt 0 ] && [[ "$1" =~ ^(Ascend|GPU|CPU)$ ]]; then EXTRA+=(--device_target "$1"); shift; fi
cd "$ACMIX_ROOT"
exec "$PY" export.py --config "$CONFIG" --checkpoint "$CKPT" "${EXTRA[@]}" "$@"
