#!/bin/sh
# bind_gpu.sh COMMAND...: run COMMAND seeing one GPU, chosen by this rank's local rank on its
# node among the GPUs the job may use (CUDA_VISIBLE_DEVICES, else every GPU nvidia-smi lists);
# more ranks than GPUs share them in turn. Without a GPU, COMMAND runs unchanged.
local_rank=${OMPI_COMM_WORLD_LOCAL_RANK:-${SLURM_LOCALID:-${MPI_LOCALRANKID:-0}}}
gpus=${CUDA_VISIBLE_DEVICES:-}
if [ -z "$gpus" ] && command -v nvidia-smi >/dev/null 2>&1; then
    gpus=$(nvidia-smi --query-gpu=index --format=csv,noheader 2>/dev/null | paste -sd, -)
fi
if [ -n "$gpus" ]; then
    count=$(echo "$gpus" | tr ',' '\n' | wc -l)
    CUDA_VISIBLE_DEVICES=$(echo "$gpus" | cut -d, -f$((local_rank % count + 1)))
    export CUDA_VISIBLE_DEVICES
fi
exec "$@"
