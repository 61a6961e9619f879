#!/usr/bin/env bash
# Evaluate a checkpoint (.ckpt, or an official .pth) on DATASET_PATH/val.
#   bash scripts/run_eval.sh CONFIG_PATH DATASET_PATH CHECKPOINT_PATH [DEVICE_TARGET] [--key value ...]
set -euo pipefail
source "$(dirname "$0")/env.sh"
acmix_need_args $# 'CONFIG_PATH DATASET_PATH CHECKPOINT_PATH' \
    "Usage: bash $0 CONFIG_PATH DATASET_PATH CHECKPOINT_PATH [Ascend|GPU|CPU] [--key value ...]"
acmix_python
CONFIG=$(realpath "$1"); DATA=$(realpath "$2"); CKPT=$(realpath "$3"); shift 3
EXTRA=()
if [ $# -gt 0 ] && [[ "$1" != -* ]]; then EXTRA+=(--device_target "$1"); shift; fi
case "$CKPT" in *.pth|*.pt|*.pth.tar) acmix_optional torch==2.13.0 ;; esac
cd "$ACMIX_ROOT"
exec "$PY" eval.py --config "$CONFIG" --data_dir "$DATA" --checkpoint "$CKPT" "${EXTRA[@]}" "$@"
