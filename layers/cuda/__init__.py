"""The layers' own CUDA kernels: one ``<layer>.cu`` file per layer beside this module, built
by CuPy (``RawModule``) once per file and float type, with ``real`` defined as ``float`` or
``double``.

Every kernel is a grid-stride loop over its outputs, each thread computing whole outputs
(a gather: no atomics, no shared memory, no thread ever waits for another). Arguments follow
one convention: arrays (C-contiguous), integers as ``long long``, floating scalars as ``real``.
The same sources build as C++ for the CPU (tests/layers/cuda_on_cpu.py), so the CPU test suite
checks the kernels' index arithmetic against NumPy; only their speed needs a GPU. Whether a
layer takes its kernel route is ``layers.backend.uses_kernels``.
"""
import functools
from pathlib import Path

import numpy as np

THREADS = 256          # threads per block
MAX_BLOCKS = 1 << 20   # the grid-stride loops cover any size with at most this many blocks

CTYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}


def source(name):
    """The CUDA source of ``<name>.cu``."""
    return Path(__file__).with_name(f"{name}.cu").read_text()


@functools.lru_cache(maxsize=None)
def _module(name, dtype):
    import cupy
    return cupy.RawModule(code=source(name), options=(f"-Dreal={CTYPES[dtype]}",))


def launch(name, kernel, dtype, items, args):
    """Run ``kernel`` of ``<name>.cu`` for float type ``dtype`` over ``items`` work items (the
    size of its grid-stride loop) with ``args`` (CuPy arrays, ints, floats)."""
    dtype = np.dtype(dtype)
    function = _module(name, dtype).get_function(kernel)
    blocks = int(max(1, min(-(-items // THREADS), MAX_BLOCKS)))
    function((blocks,), (THREADS,), tuple(_argument(a, dtype) for a in args))


def _argument(value, dtype):
    if isinstance(value, (bool, np.bool_)):
        raise TypeError("kernel arguments are arrays, ints or floats, not bools")
    if isinstance(value, (int, np.integer)):
        return np.int64(value)
    if isinstance(value, (float, np.floating)):
        return dtype.type(value)
    return value
