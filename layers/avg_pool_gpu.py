"""AvgPool2D on the kernel route (``layers/cuda/pool.cu``, C order): one thread per output in
forward, and per input pixel in backward, which gathers dy / pool_size of the windows that
hold it (no atomics)."""
from typing import NamedTuple

from layers import cuda
from layers.backend import array_module


class Saved(NamedTuple):
    """What a kernel-route forward keeps for backward (training only)."""
    x_shape: tuple     # (N, C, H, W)
    geometry: tuple    # (OH, OW, Hp, Wp)


def forward(layer, x, train):
    """y (C order) and, when ``train``, the ``Saved`` state."""
    xp = array_module(x)
    n, c, h, w = x.shape
    oh, ow, hp, wp = layer.geometry(x.shape)
    y = xp.empty((n, c, oh, ow), dtype=x.dtype)
    cuda.launch("pool", "avg_forward", x.dtype, y.size,
                (xp.ascontiguousarray(x), y, n * c, h, w, layer.k, layer.stride, layer.pad,
                 oh, ow))
    return y, (Saved(x.shape, (oh, ow, hp, wp)) if train else None)


def backward(layer, saved, dy):
    """dx (C order)."""
    xp = array_module(dy)
    (n, c, h, w), (oh, ow, _, _) = saved.x_shape, saved.geometry
    dx = xp.empty(saved.x_shape, dtype=dy.dtype)
    cuda.launch("pool", "avg_backward", dy.dtype, dx.size,
                (xp.ascontiguousarray(dy), dx, n * c, h, w, layer.k, layer.stride, layer.pad,
                 oh, ow))
    return dx
