#!/usr/bin/env bash
# Data-parallel training on Ascend, with a rank table or with msrun.
#   bash scripts/run_distribute_train.sh RANK_TABLE_FILE CONFIG_PATH DATASET_PATH [DEVICE_NUM] [--key value ...]
#   bash scripts/run_distribute_train.sh msrun           CONFIG_PATH DATASET_PATH [DEVICE_NUM] [--key value ...]
# DEVICE_NUM defaults to 8. Written from the MindSpore documentation (rank-table and msrun startup
# tutorials); not run on Ascend by the authors (no device here).
#
# Rank table: each rank's DEVICE_ID and RANK_ID come from the table (src/tools/rank_table.py checks it;
# it must list DEVICE_NUM devices for this server; a table with several servers needs SERVER_ID set to
# this machine's server_id). RANK_SIZE is the number of devices in the whole table. Each rank runs in
# its own folder, <output_dir>/rank_<RANK_ID>/, and logs to train.log there. DRY_RUN=1 prints each
# rank's command and environment (after one line per server of the table: its ranks and devices) and
# starts nothing. Several servers: rank ids go server by server in the order of server_list.
# msrun: logs in <output_dir>/msrun_log/. Several servers: run the same command on each with NODE_NUM,
# NODE_RANK (0 on the master) and MASTER_ADDR (the master's address); DEVICE_NUM is per server, and
# DRY_RUN=1 prints this server's msrun command (scripts/env.sh, acmix_msrun).
# Missing arguments or a bad rank table: one `error: ...` line on stderr and exit code 2; a rank that
# fails: exit code 1.
# Relative paths (config keys and overrides) mean what they mean from the project root: the config
# loader resolves them against ACMIX_CWD, set here.
set -euo pipefail
source "$(dirname "$0")/env.sh"
acmix_need_args $# 'RANK_TABLE_FILE|msrun CONFIG_PATH DATASET_PATH' \
    "Usage: bash $0 RANK_TABLE_FILE|msrun CONFIG_PATH DATASET_PATH [DEVICE_NUM] [--key value ...]"
acmix_python
MODE=$1; CONFIG=$(realpath "$2"); DATA=$(realpath "$3"); shift 3
DEVICE_NUM=8
if [ $# -gt 0 ] && [[ "$1" =~ ^[0-9]+$ ]]; then DEVICE_NUM=$1; shift; fi
cd "$ACMIX_ROOT"
export ACMIX_CWD="$ACMIX_ROOT"
OUT=$(acmix_config_value output_dir "$CONFIG" "$@")
if [ "$MODE" = msrun ]; then
    acmix_msrun "$DEVICE_NUM" "$OUT/msrun_log" train.py --config "$CONFIG" --data_dir "$DATA" --device_target Ascend "$@"
    exit 0  # (a failed msrun has ended the script with its exit code: set -e)
fi
TABLE=$(realpath -m "$MODE")
# lines: RANK_ID DEVICE_ID RANK_SIZE; a bad table is the tool's one-line error and its exit code (2)
RANKS=$("$PY" -m src.tools.rank_table "$TABLE" "$DEVICE_NUM") || exit $?
mapfile -t RANKS <<< "$RANKS"
[ "${DRY_RUN:-0}" = 1 ] && "$PY" -m src.tools.rank_table "$TABLE" "$DEVICE_NUM" --servers
pids=(); logs=()
for line in "${RANKS[@]}"; do
    read -r rank device size <<< "$line"
    dir="$OUT/rank_$rank"; log="$dir/train.log"
    cmd=(env RANK_TABLE_FILE="$TABLE" RANK_SIZE="$size" RANK_ID="$rank" DEVICE_ID="$device" ACMIX_CWD="$ACMIX_CWD"
         "$PY" "$ACMIX_ROOT/train.py" --config "$CONFIG" --data_dir "$DATA" --device_target Ascend "$@")
    if [ "${DRY_RUN:-0}" = 1 ]; then
        echo "rank $rank: device $device, working directory $dir, log $log"
        echo "  cd $(printf '%q' "$dir") && $(printf '%q ' "${cmd[@]}")> $(printf '%q' "$log") 2>&1"
        continue
    fi
    mkdir -p "$dir"
    (cd "$dir" && exec "${cmd[@]}") < /dev/null > "$log" 2>&1 &
    pids+=($!); logs+=("$log")
    echo "rank $rank on device $device: log $log"
done
if [ "${DRY_RUN:-0}" = 1 ]; then echo "dry run: nothing started"; exit 0; fi
echo "started ${#pids[@]} ranks of $size; logs in $OUT/rank_*/train.log"
# A scheduler that signals only this script (Kubernetes signals a container's first process) must
# still reach the ranks: SIGUSR1, a stop request (each stops after its current step, with a checkpoint)
# that never counts as a second signal to a rank the scheduler signalled too; asked again, SIGKILL.
# Not run on Ascend here.
forward() {
    acmix_stop_signal
    echo "asking the ranks to stop (SIG$ACMIX_STOP_SIGNAL)" >&2
    kill -s "$ACMIX_STOP_SIGNAL" "${pids[@]}" 2>/dev/null || true
}
trap forward TERM INT
status=0
for i in "${!pids[@]}"; do
    rc=0; acmix_wait "${pids[$i]}" || rc=$?
    [ "$rc" = 0 ] || { echo "error: a rank failed, see ${logs[$i]}" >&2; status=1; }
done
exit $status
