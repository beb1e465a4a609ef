"""MaxPool2D's backward on the CPU through its C pass (``layers/c/max_pool.c``):

    dx = 0;  dx[r s + i - p, q s + j - p] += dy[r, q]   at each window's argmax tap (i, j)

over whole planes in memory order (so a channel-major dy gives a channel-major dx), the planes
split over ``parallel.workers()`` threads. The NumPy route does the same with ``np.add.at``
into a zero-padded plane, in the same order of additions, so the two agree bit for bit.
"""
import numpy as np

from layers import c as ckernels
from layers import parallel

_ptr, _long = ckernels.pointer, ckernels.integer


def library(dtype):
    """The library for ``dtype``, or None (``layers.c.library``)."""
    return ckernels.library("max_pool", dtype)


def takes(layer, dtype):
    """Whether the C pass runs: its library built for ``dtype``, and int8 argmax taps."""
    return layer.idx_dtype == np.int8 and library(dtype) is not None


def scatter(layer, saved, dys, dxs):
    """dxs (planes, H, W) from dys (planes, OH, OW) and the argmax taps ``saved.idx``, planes
    in memory order (``max_pool_cpu.backward`` lays them out in the input's layout)."""
    (n, c, h, w), (oh, ow, _, _) = saved.x_shape, saved.geometry
    lib = library(dys.dtype)
    dims = [_long(v) for v in (oh, ow, h, w, layer.k, layer.stride, layer.pad)]

    def run(start, stop, worker):
        lib.max_pool_backward(_ptr(dys), _ptr(saved.idx), _ptr(dxs), *dims, _long(start),
                              _long(stop))
    parallel.split_work(np, n * c, run, dxs.nbytes)
