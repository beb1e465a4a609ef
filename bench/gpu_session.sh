#!/bin/sh
# bench/gpu_session.sh: every GPU check of the project in one run, for a session on a GPU machine
# (one command of at most 10 minutes, 15 minutes of machine time in all): the GPU tests (tests/gpu, and the device and NVRTC tests), then
# bench/step.py on the GPU: googlenet batch 128 and inception_small batch 512, float32 and
# TF32, each with PyTorch in the same run, and one per-layer profile of googlenet (a separate
# run: its per-layer waits would slow the timed steps). Logs go to $OUT (the device tool's
# folder), else ./gpu-results. Wheels the machine lacks (bench/gpu_wheels.sh puts them in
# .whl/) are installed under /tmp/pt first. Meant to end in about 8 minutes; each part has its
# own time limit.
set -u
cd "$(dirname "$0")/.."
out=${OUT:-gpu-results}
mkdir -p "$out"
if [ -d .whl ]; then
    python3 -m pip install -q --ignore-installed --no-index --no-deps --no-compile \
        --prefix /tmp/pt .whl/*.whl || exit 1
    PYTHONPATH=$(echo /tmp/pt/lib/python3*/site-packages)${PYTHONPATH:+:$PYTHONPATH}
    PATH=/tmp/pt/bin:$PATH
    LD_LIBRARY_PATH=/tmp/pt/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    export PYTHONPATH PATH LD_LIBRARY_PATH
fi
export PYTHONUNBUFFERED=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
{
    date; nvidia-smi; command -v mpiexec
    python3 -c "import cupy, numpy, torch
print('cupy', cupy.__version__, 'numpy', numpy.__version__, 'torch', torch.__version__)"
} > "$out/machine.txt" 2>&1
timeout 300 python3 -m pytest -q -rfEs -p no:cacheprovider tests/gpu tests/engine/test_device.py \
    tests/layers/test_cuda_compile.py > "$out/tests.txt" 2>&1
echo "tests exit $?" >> "$out/tests.txt"
for run in "googlenet --batch 128 --torch" "googlenet --batch 128 --tf32 --torch" \
           "inception_small --batch 512 --torch" "inception_small --batch 512 --tf32 --torch" \
           "googlenet --batch 128 --profile --steps 3"; do
    echo "== bench/step.py --device gpu --model $run" >> "$out/bench.txt"
    # shellcheck disable=SC2086
    timeout 100 python3 bench/step.py --device gpu --model $run >> "$out/bench.txt" 2>&1
    echo "exit $?" >> "$out/bench.txt"
done
tail -n 3 "$out/tests.txt"
grep -E "^==|img/s|ratio|exit" "$out/bench.txt"
