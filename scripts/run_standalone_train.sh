#!/usr/bin/env bash
# Train on one device.
#   bash scripts/run_standalone_train.sh CONFIG_PATH DATASET_PATH [DEVICE_TARGET] [--key value ...]
#   DEVICE_TARGET: Ascend | GPU | CPU (default: the config's). Extra arguments override config keys.
set -euo pipefail
source "$(dirname "$0")/env.sh"
acmix_need_args $# 'CONFIG_PATH DATASET_PATH' \
    "Usage: bash $0 CONFIG_PATH DATASET_PATH [Ascend|GPU|CPU] [--key value ...]" \
    "  e.g. bash $0 config/acmix_resnet26.yaml /data/imagenet Ascend"
acmix_python
CONFIG=$(realpath "$1"); DATA=$(realpath "$2"); shift 2
EXTRA=()
if [ $# -gt 0 ] && [[ "$1" != -* ]]; then EXTRA+=(--device_target "$1"); shift; fi
cd "$ACMIX_ROOT"
exec "$PY" train.py --config "$CONFIG" --data_dir "$DATA" "${EXTRA[@]}" "$@"
