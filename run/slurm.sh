# Shared by the slurm_*.sbatch scripts (sourced inside the allocation): one rank per Slurm
# task, started by Open MPI's mpiexec (default; it reads the allocation, and EASGD/Downpour
# get ULFM so a lost worker is dropped) or by srun (PT_LAUNCHER=srun; needs Slurm's PMIx
# plugin, and a lost worker ends the step), each rank through bind_gpu.sh (one GPU by local
# rank). Submit from the project folder, or set PT_ROOT to it.
#
# Stopping: the scripts ask for Slurm's warning signal before the time limit
# (--signal=B:USR1@120). On it, as on a SIGINT or SIGTERM to the job, every rank stops at the
# next step boundary with a checkpoint (run_job, common.sh). After the warning the job
# requeues itself (scontrol requeue) when cluster.requeue is true, and a requeued job resumes
# from its run folder on its own: log.dir defaults to runs/slurm-<job id>, which a requeue
# keeps. scancel stops the job without a requeue.
source "${PT_ROOT:-${SLURM_SUBMIT_DIR:-.}}/run/common.sh"
# a warning or SIGTERM before the job has started is recorded (run_job then does not start it)
STOPPING=""
trap 'STOPPING=${STOPPING:-SIGUSR1}' USR1
trap 'STOPPING=${STOPPING:-SIGTERM}' TERM

slurm_launch() {   # slurm_launch RULE [config.yaml] [--set key=value ...]
    local rule=$1
    shift
    ARGS=("$@")
    parse_config "$@"
    local ranks=${SLURM_NTASKS:-}
    [ -n "$ranks" ] || { echo "SLURM_NTASKS is not set: submit this script with sbatch" >&2
                         exit 2; }
    if [ "$(id -u)" = 0 ]; then
        export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
    fi
    export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
    local launcher=${PT_LAUNCHER:-mpiexec} settings folder requeue code=0
    settings=$(config_value log.dir cluster.requeue) || exit 2
    { read -r folder; read -r requeue; } <<< "$settings"
    if [ -z "$folder" ]; then          # one folder per job, kept by a requeue
        folder="runs/slurm-${SLURM_JOB_ID:-$$}"
        EXTRA+=(--set "log.dir=$folder")
    fi
    if [ "${SLURM_RESTART_COUNT:-0}" -gt 0 ]; then
        echo "requeued (restart ${SLURM_RESTART_COUNT}): resuming from $folder"
        EXTRA+=(--set resume=auto)
    fi
    PT_LAUNCH=$(printf '%q ' sbatch "$root/run/slurm_$(echo "$rule" | tr 'A-Z' 'a-z').sbatch" \
                "${ARGS[@]}")
    export PT_LAUNCH="${PT_LAUNCH% }"
    echo "$rule: $ranks ranks on ${SLURM_JOB_NUM_NODES:-?} node(s) ${SLURM_JOB_NODELIST:-}," \
         "started by $launcher, ${SLURM_CPUS_PER_TASK:-?} CPU(s) per rank; config $CONFIG;" \
         "run folder $folder"
    local job=("$root/run/bind_gpu.sh" python3 -m engine.train "$CONFIG"
               --set "sync_rule=$rule" --set log.bar=false "${EXTRA[@]}")
    case "$launcher" in
        srun)
            run_job srun --mpi=pmix --kill-on-bad-exit=1 "${job[@]}" || code=$? ;;
        mpiexec)
            local ft=()
            case "$rule" in EASGD|DOWNPOUR) ft=(--with-ft ulfm) ;; esac
            # unbound: the engine shares each node's cores among its ranks itself
            run_job mpiexec "${ft[@]}" --bind-to none -x PYTHONPATH -x PT_LAUNCH \
                -n "$ranks" "${job[@]}" || code=$? ;;
        *)
            echo "PT_LAUNCHER must be mpiexec or srun, got '$launcher'" >&2; exit 2 ;;
    esac
    if [ "$STOPPING" = SIGUSR1 ] && [ "$requeue" = True ] && [ -n "${SLURM_JOB_ID:-}" ]; then
        echo "Slurm's warning signal: requeueing job $SLURM_JOB_ID (cluster.requeue)"
        scontrol requeue "$SLURM_JOB_ID"
    fi
    exit "$code"
}
