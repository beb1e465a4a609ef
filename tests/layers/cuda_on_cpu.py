"""The kernels of layers/cuda built as C++ and run on the CPU, for the CPU test suite.

A shim header defines CUDA's keywords away and gives a grid of one block of one thread, so each
grid-stride loop visits all its items in order; ``launch`` has the signature of
``layers.cuda.launch`` and takes NumPy arrays. Built with g++ into a temporary folder, once per
source and float type.
"""
import ctypes
import functools
import hashlib
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest

from layers import cuda, layout

SHIM = """
#include <cmath>
struct ThreadIndex { unsigned long long x, y, z; };
static const ThreadIndex threadIdx = {0, 0, 0}, blockIdx = {0, 0, 0},
                         blockDim = {1, 1, 1}, gridDim = {1, 1, 1};
#define __global__
#define __device__ inline
#define __restrict__ __restrict
using std::exp; using std::log; using std::pow; using std::sqrt; using std::fmax;
"""

_BUILD_DIR = tempfile.TemporaryDirectory(prefix="pt-cuda-on-cpu-")   # removed at exit
_BUILD = Path(_BUILD_DIR.name)


def compiler():
    """g++, or skip the test that needs it."""
    path = shutil.which("g++")
    if path is None:
        pytest.skip("g++ is needed to build the CUDA kernels for the CPU")
    return path


@functools.lru_cache(maxsize=None)
def library(name, dtype):
    text = cuda.source(name)
    ctype = cuda.CTYPES[np.dtype(dtype)]
    digest = hashlib.sha1((SHIM + text + ctype).encode()).hexdigest()[:12]
    (_BUILD / "shim.h").write_text(SHIM)
    out = _BUILD / f"{name}-{ctype}-{digest}.so"
    if not out.exists():
        done = subprocess.run([compiler(), "-O1", "-shared", "-fPIC", "-x", "c++",
                               "-include", str(_BUILD / "shim.h"), f"-Dreal={ctype}",
                               str(Path(cuda.__file__).with_name(f"{name}.cu")), "-o", str(out)],
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    return ctypes.CDLL(str(out))


def launch(name, kernel, dtype, items, args):
    """``layers.cuda.launch`` on the CPU: NumPy arrays (C-contiguous), ints, floats."""
    dtype = np.dtype(dtype)
    real = ctypes.c_float if dtype == np.float32 else ctypes.c_double
    converted = []
    for a in args:
        if isinstance(a, np.ndarray):          # dense from its first element (C order, or a
            assert a.flags.c_contiguous or layout.dense(a) is not None and \
                layout.dense(a).ctypes.data == a.ctypes.data, \
                f"{kernel}: arrays must be dense (C order or channel-major)"   # transpose)
            converted.append(ctypes.c_void_p(a.ctypes.data))
        elif isinstance(a, (int, np.integer)) and not isinstance(a, bool):
            converted.append(ctypes.c_longlong(int(a)))
        elif isinstance(a, (float, np.floating)):
            converted.append(real(float(a)))
        else:
            raise TypeError(f"{kernel}: unsupported argument {a!r}")
    getattr(library(name, dtype), kernel)(*converted)
