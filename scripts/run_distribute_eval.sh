#!/usr/bin/env bash
# Evaluation split over the devices of one or several servers, with msrun.
#   bash scripts/run_distribute_eval.sh CONFIG_PATH DATASET_PATH CHECKPOINT_PATH [DEVICE_NUM] [--key value ...]
# Each rank evaluates its shard of DATASET_PATH/val; rank 0 prints the result over all of it (the same
# counts and top-1 as one process). DEVICE_NUM (per server) defaults to 8; DEVICE_TARGET (Ascend, GPU or
# CPU; default Ascend). Logs: LOG_DIR (default ./msrun_eval_log). Several servers: NODE_NUM, NODE_RANK
# and MASTER_ADDR on each, as for run_distribute_train.sh msrun (scripts/env.sh, acmix_msrun); every
# server needs the checkpoint and the data at the paths given. DRY_RUN=1 prints the msrun command.
# Tested on CPU with two "servers" on one machine (tests/test_engine_distributed.py); not run on Ascend
# or GPU by the authors (no device here).
set -euo pipefail
source "$(dirname "$0")/env.sh"
acmix_need_args $# 'CONFIG_PATH DATASET_PATH CHECKPOINT_PATH' \
    "Usage: bash $0 CONFIG_PATH DATASET_PATH CHECKPOINT_PATH [DEVICE_NUM] [--key value ...]"
acmix_python
CONFIG=$(realpath "$1"); DATA=$(realpath "$2"); CKPT=$(realpath "$3"); shift 3
DEVICE_NUM=8
if [ $# -gt 0 ] && [[ "$1" =~ ^[0-9]+$ ]]; then DEVICE_NUM=$1; shift; fi
LOG_DIR=$(realpath -m "${LOG_DIR:-msrun_eval_log}")
case "$CKPT" in *.pth|*.pt|*.pth.tar) acmix_optional torch==2.13.0 ;; esac
cd "$ACMIX_ROOT"
acmix_msrun "$DEVICE_NUM" "$LOG_DIR" eval.py \
    --config "$CONFIG" --data_dir "$DATA" --checkpoint "$CKPT" --device_target "${DEVICE_TARGET:-Ascend}" "$@"
