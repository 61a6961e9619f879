#!/usr/bin/env bash
# Data-parallel training on GPUs with msrun.
#   bash scripts/run_distribute_train_gpu.sh CONFIG_PATH DATASET_PATH [DEVICE_NUM] [--key value ...]
# DEVICE_NUM (per server) defaults to 8. Logs: <output_dir>/msrun_log/. Several servers: NODE_NUM,
# NODE_RANK and MASTER_ADDR on each, as for run_distribute_train.sh msrun; DRY_RUN=1 prints the command. Not run on GPUs by the authors (no device here);
# the same launcher is tested on CPU (tests/test_engine_distributed.py).
set -euo pipefail
source "$(dirname "$0")/env.sh"
acmix_need_args $# 'CONFIG_PATH DATASET_PATH' \
    "Usage: bash $0 CONFIG_PATH DATASET_PATH [DEVICE_NUM] [--key value ...]"
acmix_python
CONFIG=$(realpath "$1"); DATA=$(realpath "$2"); shift 2
DEVICE_NUM=8
if [ $# -gt 0 ] && [[ "$1" =~ ^[0-9]+$ ]]; then DEVICE_NUM=$1; shift; fi
cd "$ACMIX_ROOT"
OUT=$(acmix_config_value output_dir "$CONFIG" "$@")
acmix_msrun "$DEVICE_NUM" "$OUT/msrun_log" train.py \
    --config "$CONFIG" --data_dir "$DATA" --device_target "${DEVICE_TARGET:-GPU}" "$@"
