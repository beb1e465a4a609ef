# Shared by the slurm_*.sbatch scripts (sourced inside the allocation): one rank per Slurm
# task, started by Open MPI's mpiexec (default; it reads the allocation, and EASGD/Downpour
# get ULFM so a lost worker is dropped) or by srun (PT_LAUNCHER=srun; needs Slurm's PMIx
# plugin, and a lost worker ends the step), each rank through bind_gpu.sh (one GPU by local
# rank). Submit from the project folder, or set PT_ROOT to it.
source "${PT_ROOT:-${SLURM_SUBMIT_DIR:-.}}/run/common.sh"

slurm_launch() {   # slurm_launch RULE [config.yaml] [--set key=value ...]
    local rule=$1
    shift
    parse_config "$@"
    local ranks=${SLURM_NTASKS:-}
    [ -n "$ranks" ] || { echo "SLURM_NTASKS is not set: submit this script with sbatch" >&2
                         exit 2; }
    if [ "$(id -u)" = 0 ]; then
        export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
    fi
    export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
    local launcher=${PT_LAUNCHER:-mpiexec}
    echo "$rule: $ranks ranks on ${SLURM_JOB_NUM_NODES:-?} node(s) ${SLURM_JOB_NODELIST:-}," \
         "started by $launcher, ${SLURM_CPUS_PER_TASK:-?} CPU(s) per rank; config $CONFIG"
    local job=("$root/run/bind_gpu.sh" python3 -m engine.train "$CONFIG"
               --set "sync_rule=$rule" --set log.bar=false "${EXTRA[@]}")
    case "$launcher" in
        srun)
            exec srun --mpi=pmix --kill-on-bad-exit=1 "${job[@]}" ;;
        mpiexec)
            local ft=()
            case "$rule" in EASGD|DOWNPOUR) ft=(--with-ft ulfm) ;; esac
            # unbound: the engine shares each node's cores among its ranks itself
            exec mpiexec "${ft[@]}" --bind-to none -x PYTHONPATH -n "$ranks" "${job[@]}" ;;
        *)
            echo "PT_LAUNCHER must be mpiexec or srun, got '$launcher'" >&2; exit 2 ;;
    esac
}
