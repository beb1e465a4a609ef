#!/bin/sh
# bench/gpu_session.sh: every GPU check of the project in one command of about 6 minutes, for a
# session on a GPU machine (15 minutes of machine time in all, a start included; at most 10
# minutes for one command). Run it with the wheels of bench/gpu_wheels.sh carried in .whl/.
#
#   part                                                   limit   writes to $OUT
#   install the carried wheels under /tmp/pt                 60 s   -
#   preflight: CuPy, a GPU, NVRTC, wheels, PyTorch           30 s   machine.txt
#   googlenet b128 float32 against PyTorch (alternating)     60 s   bench.txt, summary.txt
#   googlenet b128 TF32 against PyTorch                      60 s   bench.txt, summary.txt
#   inception_small b512 float32 against PyTorch             50 s   bench.txt, summary.txt
#   googlenet b128 per-layer profile                         40 s   profile.txt
#   tests/gpu and the NVRTC build test                      120 s   tests.txt, summary.txt
#
# The limits add up to 420 s; a run where everything works takes less. Benchmarks come first
# and each figure reaches summary.txt as it comes, so a session cut short keeps what it
# measured. $OUT is the device tool's folder; elsewhere ./gpu-results.
set -u
cd "$(dirname "$0")/.."
out=${OUT:-gpu-results}
mkdir -p "$out"
summary="$out/summary.txt"
note() { echo "$*" | tee -a "$summary"; }
note "gpu_session $(date -u +%FT%TZ) commit $(git rev-parse --short HEAD 2>/dev/null || echo ?)"

if [ -d .whl ]; then
    timeout 60 python3 -m pip install -q --ignore-installed --no-index --no-deps --no-compile \
        --prefix /tmp/pt .whl/*.whl || { note "installing .whl/ failed"; exit 1; }
    PYTHONPATH=$(echo /tmp/pt/lib/python3*/site-packages)${PYTHONPATH:+:$PYTHONPATH}
    PATH=/tmp/pt/bin:$PATH
    LD_LIBRARY_PATH=/tmp/pt/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    export PYTHONPATH PATH LD_LIBRARY_PATH
else
    note "no .whl/ here: hickle, mpi4py and Open MPI must be installed already"
fi
export PYTHONUNBUFFERED=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export PRTE_MCA_rmaps_default_mapping_policy=:OVERSUBSCRIBE

nvidia-smi > "$out/machine.txt" 2>&1
timeout 30 python3 bench/gpu_preflight.py "$out/machine.txt" || {
    note "preflight failed (exit $?): see above; nothing else was run"; exit 2; }

bench() {   # bench LIMIT FILE ARGS...: one bench/step.py run, its figures into the summary
    limit=$1 file=$2
    shift 2
    timeout "$limit" python3 bench/step.py --device gpu "$@" > /tmp/pt-run.txt 2>&1
    code=$?
    { echo "== bench/step.py --device gpu $* (exit $code)"; cat /tmp/pt-run.txt; } \
        >> "$out/$file"
    note "== $* (exit $code)"
    grep -E "^(model|forward|step|pytorch)" /tmp/pt-run.txt | tee -a "$summary"
    [ "$code" -eq 0 ] || tail -n 3 /tmp/pt-run.txt | tee -a "$summary"
}
bench 60 bench.txt --model googlenet --batch 128 --steps 5 --rounds 3 --torch
bench 60 bench.txt --model googlenet --batch 128 --steps 5 --rounds 3 --torch --tf32
bench 50 bench.txt --model inception_small --batch 512 --steps 5 --rounds 3 --torch
bench 40 profile.txt --model googlenet --batch 128 --steps 3 --profile

timeout_flag=""
python3 -c "import pytest_timeout" 2>/dev/null && timeout_flag="--timeout=90"
# shellcheck disable=SC2086
timeout 120 python3 -m pytest -v -rfEs -p no:cacheprovider $timeout_flag tests/gpu \
    tests/layers/test_cuda_compile.py > "$out/tests.txt" 2>&1
note "tests exit $?: $(grep -E '(passed|failed|error)' "$out/tests.txt" | tail -n 1)"
grep -E "(FAILED|ERROR|SKIPPED)" "$out/tests.txt" | head -n 20 >> "$summary"
cat "$summary"
