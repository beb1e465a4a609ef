"""Host (NumPy) and device (CuPy) arrays side by side, for code that takes either: checkpoints,
the sync rules' messages, state copies. Imports NumPy only: CuPy arrays are recognised by type.
"""
import numpy as np


def is_device_array(a):
    """Whether ``a`` lives on a GPU (a CuPy array)."""
    return type(a).__module__.startswith("cupy")


def to_host(a):
    """``a`` as a NumPy array (a copy from a GPU, ``a`` itself on the CPU)."""
    return a.get() if is_device_array(a) else np.asarray(a)


def copy_into(dst, src):
    """``dst[...] = src`` for any mix of host and device arrays of the same shape."""
    if is_device_array(dst):
        if is_device_array(src):
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
    if not is_device_array(buffer):
        return host
    import cupy                                      # loaded already: buffer is a CuPy array
    return cupy.asarray(host)
