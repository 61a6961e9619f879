# Sourced by the scripts in this folder: picks the Python interpreter and sets the environment.
#
#   acmix_python           sets PY: $PYTHON if it already has mindspore (e.g. an Ascend server's),
#                          else the project's .venv, created and filled from requirements.txt on
#                          first use (and again whenever requirements.txt changes).
#   acmix_optional PKG...  installs optional packages into the project's .venv only (never into a
#                          $PYTHON you named); a failure is a warning, not an error.
#   acmix_need_args GOT 'NAME...' USAGE_LINE...
#                          a launcher's usage check, before any set-up: with fewer than the named
#                          required arguments (GOT is the launcher's $#), one `error: ...` line
#                          naming the missing ones, then the usage lines, on stderr; exit code 2.
#   acmix_msrun DEVICE_NUM LOG_DIR SCRIPT ARG...
#                          runs msrun with SCRIPT ARG... (train.py or eval.py) in DEVICE_NUM local workers
#                          of one job, logs in LOG_DIR, and returns its exit code. Run from the project
#                          root. Several nodes (servers): run it on every node with NODE_NUM (nodes in
#                          the job, default 1), NODE_RANK (this node's, 0..NODE_NUM-1) and MASTER_ADDR
#                          (node 0's address; default 127.0.0.1, which only a one-node job may leave
#                          out); the job has NODE_NUM x DEVICE_NUM workers. MASTER_PORT: default 8118.
#                          SIGTERM or SIGINT to the launcher reaches every worker of this node as
#                          SIGUSR1, a stop request (train.py stops after its step, with a checkpoint);
#                          a second one as SIGKILL. msrun itself passes no signal on; it runs in a
#                          session of its own, so a terminal's Ctrl-C goes through the launcher too.
#                          DRY_RUN=1 prints the msrun command and starts nothing; an inconsistent
#                          setting is one `error: ...` line and exit code 2.
ACMIX_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export ONEDNN_MAX_CPU_ISA="${ONEDNN_MAX_CPU_ISA:-AVX2}"   # else oneDNN convs are ~100x slower on AVX-512 CPUs
export GLOG_v="${GLOG_v:-3}"                               # MindSpore's warning flood off
ACMIX_OWN_VENV=0

acmix_python() {
    if [ -n "${PYTHON:-}" ] && "$PYTHON" -c "import mindspore" >/dev/null 2>&1; then
        PY="$PYTHON"
    else
        local venv="$ACMIX_ROOT/.venv" stamp="$ACMIX_ROOT/.venv/.requirements-installed"
        if [ ! -x "$venv/bin/python" ]; then
            echo "[setup] creating $venv" >&2
            "${PYTHON:-python3}" -m venv "$venv"
        fi
        if [ ! -f "$stamp" ] || ! cmp -s "$ACMIX_ROOT/requirements.txt" "$stamp"; then
            echo "[setup] installing requirements.txt into $venv (first run: a few minutes)" >&2
            "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$ACMIX_ROOT/requirements.txt"
            cp "$ACMIX_ROOT/requirements.txt" "$stamp"
        fi
        PY="$venv/bin/python"
        ACMIX_OWN_VENV=1
    fi
    # msrun starts workers with the bare `python`: the interpreter's folder must come first on PATH.
    export PATH="$(dirname "$PY"):$PATH"
    export PYTHONPATH="$ACMIX_ROOT${PYTHONPATH:+:$PYTHONPATH}"
}

acmix_optional() {
    [ "$ACMIX_OWN_VENV" = 1 ] || return 0
    local missing=()
    for spec in "$@"; do
        local module="${spec%%[=<>]*}"
        case "$module" in  # distribution names that are not module names
            scikit-learn) module=sklearn ;;
            pytest-xdist) module=xdist ;;
        esac
        # found, not imported: torchvision's import fails beside torch 2.13 (see tests/test_data_eval_input.py)
        "$PY" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$module') is None)" \
            >/dev/null 2>&1 || missing+=("$spec")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "[setup] installing optional ${missing[*]}" >&2
    "$PY" -m pip install -q --disable-pip-version-check "${missing[@]}" "numpy==1.26.4" \
        || echo "[setup] warning: could not install ${missing[*]}; what needs it will be skipped" >&2
}

# acmix_config_value KEY CONFIG_PATH [overrides...]: the resolved value of a config key.
acmix_config_value() {
    local key=$1; shift
    "$PY" -c "import sys; from src.config import load_config, parse_overrides; \
print(load_config(sys.argv[2], parse_overrides(sys.argv[3:]))[sys.argv[1]])" "$key" "$@"
}

acmix_need_args() {
    local got=$1 names=($2); shift 2
    [ "$got" -ge ${#names[@]} ] && return 0
    echo "error: missing argument(s): ${names[*]:$got} (${#names[@]} required, got $got)" >&2
    printf '%s\n' "$@" >&2
    exit 2
}

acmix_msrun() {
    local workers=$1 log_dir=$2 script=$3; shift 3
    local nodes=${NODE_NUM:-1} node_rank=${NODE_RANK:-0} port=${MASTER_PORT:-8118}
    local fail=""
    if ! [[ "$nodes" =~ ^[1-9][0-9]*$ ]]; then
        fail="NODE_NUM must be a positive integer (the nodes in the job), got '$nodes'"
    elif ! [[ "$node_rank" =~ ^[0-9]+$ ]] || [ "$node_rank" -ge "$nodes" ]; then
        fail="NODE_RANK must be this node's rank, 0..$((nodes - 1)) for NODE_NUM=$nodes, got '$node_rank'"
    elif [ "$nodes" -gt 1 ] && [ -z "${MASTER_ADDR:-}" ]; then
        fail="NODE_NUM=$nodes needs MASTER_ADDR, the address of node 0 (the same on every node)"
    elif ! [[ "$port" =~ ^[0-9]+$ ]]; then
        fail="MASTER_PORT must be a port number, got '$port'"
    fi
    if [ -n "$fail" ]; then echo "error: $fail" >&2; exit 2; fi
    local cmd=(msrun --worker_num="$((workers * nodes))" --local_worker_num="$workers"
               --master_addr="${MASTER_ADDR:-127.0.0.1}" --master_port="$port")
    [ "$nodes" -gt 1 ] && cmd+=(--node_rank="$node_rank")
    cmd+=(--log_dir="$log_dir" --join=True "$script" "$@")
    if [ "${DRY_RUN:-0}" = 1 ]; then
        echo "node $node_rank of $nodes: $(printf '%q ' "${cmd[@]}")"
        echo "dry run: nothing started"
        exit 0
    fi
    setsid --wait "${cmd[@]}" &
    local msrun_pid=$! rc=0
    trap "acmix_stop_workers $msrun_pid $(printf '%q' "$script")" TERM INT
    acmix_wait "$msrun_pid" || rc=$?
    trap - TERM INT
    return "$rc"
}

# acmix_wait PID: waits until the child PID has ended, across the trapped signals that end a bare
# `wait` early; returns its exit code.
acmix_wait() {
    local rc
    while :; do
        rc=0; wait "$1" || rc=$?
        kill -0 "$1" 2>/dev/null || return "$rc"
    done
}

# acmix_stop_signal: the signal a launcher passes on to its training processes, in ACMIX_STOP_SIGNAL:
# USR1 the first time (a stop request: train.py stops after its step, with a checkpoint), KILL after.
acmix_stop_signal() {
    ACMIX_STOPS=$((${ACMIX_STOPS:-0} + 1))
    ACMIX_STOP_SIGNAL=USR1
    [ "$ACMIX_STOPS" = 1 ] || ACMIX_STOP_SIGNAL=KILL
}

# acmix_stop_workers PID SCRIPT: acmix_stop_signal to the msrun workers below PID that run SCRIPT.
acmix_stop_workers() {
    acmix_stop_signal
    local pids
    pids=$("$PY" -m src.tools.msrun_workers "$1" "$2" --signal "$ACMIX_STOP_SIGNAL" 2>&1 | tr '\n' ' ') || true
    echo "asked the workers to stop (SIG$ACMIX_STOP_SIGNAL): ${pids:-none found}" >&2
}
