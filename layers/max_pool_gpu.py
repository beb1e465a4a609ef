"""MaxPool2D on the kernel route (``layers/cuda/pool.cu``, C order): forward writes y and the
argmax of each window (int32, the flat index in its plane), one thread per output; backward
gathers, for each input pixel, the dy of the windows whose argmax it is (no atomics)."""
from typing import NamedTuple

import numpy as np

from layers import cuda
from layers.backend import array_module


class Saved(NamedTuple):
    """What a kernel-route forward keeps for backward (training only)."""
    x_shape: tuple     # (N, C, H, W)
    geometry: tuple    # (OH, OW, Hp, Wp)
    idx: object        # (N*C, OH, OW) int32: each window's argmax, flat in its plane


def forward(layer, x, train):
    """y (C order) and, when ``train``, the ``Saved`` state."""
    xp = array_module(x)
    n, c, h, w = x.shape
    oh, ow, hp, wp = layer.geometry(x.shape)
    y = xp.empty((n, c, oh, ow), dtype=x.dtype)
    arg = layer.workspace("arg_kernel", (n * c, oh, ow), np.int32, xp)
    cuda.launch("pool", "max_forward", x.dtype, y.size,
                (xp.ascontiguousarray(x), y, arg, n * c, h, w, layer.k, layer.stride,
                 layer.pad, oh, ow, -np.inf))
    return y, (Saved(x.shape, (oh, ow, hp, wp), arg) if train else None)


def backward(layer, saved, dy):
    """dx (C order)."""
    xp = array_module(dy)
    (n, c, h, w), (oh, ow, _, _) = saved.x_shape, saved.geometry
    dx = xp.empty(saved.x_shape, dtype=dy.dtype)
    cuda.launch("pool", "max_backward", dy.dtype, dx.size,
                (xp.ascontiguousarray(dy), saved.idx, dx, n * c, h, w, layer.k, layer.stride,
                 layer.pad, oh, ow))
    return dx
