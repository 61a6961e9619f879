#!/usr/bin/env bash
# Data-parallel training on Ascend, with a rank table or with msrun.
#   bash scripts/run_distribute_train.sh RANK_TABLE_FILE CONFIG_PATH DATASET_PATH [DEVICE_NUM] [--key value ...]
#   bash scripts/run_distribute_train.sh msrun           CONFIG_PATH DATASET_PATH [DEVICE_NUM] [--key value ...]
# DEVICE_NUM defaults to 8. Logs: <output_dir>/rank_logs/ (rank table) or <output_dir>/msrun_log/ (msrun).
# Written from the MindSpore documentation; not run on Ascend by the authors (no device here).
set -euo pipefail
if [ $# -lt 3 ]; then
    echo "Usage: bash $0 RANK_TABLE_FILE|msrun CONFIG_PATH DATASET_PATH [DEVICE_NUM] [--key value ...]" >&2
    exit 1
fi
source "$(dirname "$0")/env.sh"
acmix_python
MODE=$1; CONFIG=$(realpath "$2"); DATA=$(realpath "$3"); shift 3
DEVICE_NUM=8
if [ $# -gt 0 ] && [[ "$1" =~ ^[0-9]+$ ]]; then DEVICE_NUM=$1; shift; fi
cd "$ACMIX_ROOT"
OUT=$(acmix_config_value output_dir "$CONFIG" "$@")
if [ "$MODE" = msrun ]; then
    exec msrun --worker_num="$DEVICE_NUM" --local_worker_num="$DEVICE_NUM" --master_addr=127.0.0.1 \
        --master_port="${MASTER_PORT:-8118}" --log_dir="$OUT/msrun_log" --join=True \
        train.py --config "$CONFIG" --data_dir "$DATA" --device_target Ascend "$@"
fi
if [ ! -f "$MODE" ]; then
    echo "error: rank table file not found: $MODE" >&2; exit 1
fi
export RANK_TABLE_FILE=$(realpath "$MODE") RANK_SIZE=$DEVICE_NUM
mkdir -p "$OUT/rank_logs"
pids=()
for ((i = 0; i < DEVICE_NUM; i++)); do
    DEVICE_ID=$i RANK_ID=$i "$PY" train.py --config "$CONFIG" --data_dir "$DATA" --device_target Ascend "$@" \
        > "$OUT/rank_logs/rank_$i.log" 2>&1 &
    pids+=($!)
done
echo "started $DEVICE_NUM ranks; logs in $OUT/rank_logs/"
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
exit $status
