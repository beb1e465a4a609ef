"""Where arrays live, asked in one place: NumPy on the host, CuPy on a GPU.

Every question the code asks of an array's device goes through here (the DeZero idea: one tiny
backend switch):

- ``array_module(x)``: numpy or cupy, whichever owns ``x``;
- ``on_device(x)``: whether ``x`` lives on a GPU;
- ``to_host``, ``copy_into``, ``host_like``, ``in_memory_of``: copies between the two;
- ``synchronize(xp)``: wait for the GPU's queued work (before MPI or the host reads memory);
- ``out_of_memory(err)``: whether ``err`` is CuPy's out-of-memory error;
- ``uses_kernels(xp)``: whether layers take their kernel route (``layers/cuda``) for arrays of
  ``xp``: on CuPy; the CPU tests switch it on for NumPy, with the kernels built as C++.

Imports NumPy only: CuPy arrays are recognised by type, and CuPy is imported only where such an
array (or CuPy itself) already exists.
"""
import sys

import numpy as np


def on_device(x):
    """Whether ``x`` is a GPU (CuPy) array."""
    return type(x).__module__.startswith("cupy")


def array_module(x):
    """numpy or cupy, whichever owns ``x``."""
    if on_device(x):
        import cupy
        return cupy
    return np


def uses_kernels(xp):
    """Whether layers run their CUDA kernels for arrays of module ``xp``."""
    return xp is not np


def to_host(a):
    """``a`` as a NumPy array (a copy from a GPU, ``a`` itself on the host)."""
    return a.get() if on_device(a) else np.asarray(a)


def copy_into(dst, src):
    """``dst[...] = src`` for any mix of host and device arrays of the same shape."""
    if on_device(dst):
        if on_device(src):
            dst[...] = src
        else:
            dst.set(np.ascontiguousarray(src, dtype=dst.dtype).reshape(dst.shape))
    else:
        dst[...] = to_host(src)
    return dst


def host_like(buffer):
    """An empty NumPy array of ``buffer``'s shape and dtype (a message buffer for MPI, which
    the sync rules give host memory whatever the device)."""
    return np.empty(buffer.shape, buffer.dtype)


def in_memory_of(buffer, host):
    """The host array ``host`` where ``buffer`` lives: itself for NumPy, a GPU copy for CuPy."""
    return array_module(buffer).asarray(host) if on_device(buffer) else host


def synchronize(xp):
    """Wait until the current GPU stream has done its queued work (nothing for NumPy)."""
    if xp is not np:
        xp.cuda.get_current_stream().synchronize()


def out_of_memory(err):
    """Whether ``err`` is CuPy's out-of-memory error (CuPy is not imported for the check)."""
    cupy = sys.modules.get("cupy")
    return cupy is not None and isinstance(err, cupy.cuda.memory.OutOfMemoryError)
