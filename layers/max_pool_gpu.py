"""MaxPool2D on the kernel route (``layers/cuda/pool.cu``): forward writes y and the argmax of
each window (int32, the flat index in its plane), one thread per output; backward gathers, for
each input pixel, the dy of the windows whose argmax it is (no atomics). The kernels take the
(H, W) planes in memory order, so x may be C order or channel-major (``layers/layout.py``) and
y, dy and dx keep its layout."""
from typing import NamedTuple

import numpy as np

from layers import cuda, layout
from layers.backend import array_module


class Saved(NamedTuple):
    """What a kernel-route forward keeps for backward (training only)."""
    x_shape: tuple        # (N, C, H, W)
    geometry: tuple       # (OH, OW, Hp, Wp)
    idx: object           # (N*C, OH, OW) int32: each window's argmax, flat in its plane
    channel_major: bool   # the planes' order (x's layout)


def forward(layer, x, train):
    """y (x's layout) and, when ``train``, the ``Saved`` state."""
    xp = array_module(x)
    x = layout.dense_planes(x)
    n, c, h, w = x.shape
    oh, ow, hp, wp = layer.geometry(x.shape)
    channel_major = not x.flags.c_contiguous
    y = layout.empty_as((n, c, oh, ow), x.dtype, channel_major, xp)
    arg = layer.workspace("arg_kernel", (n * c, oh, ow), np.int32, xp)
    cuda.launch("pool", "max_forward", x.dtype, y.size,
                (x, y, arg, n * c, h, w, layer.k, layer.stride, layer.pad, oh, ow, -np.inf))
    return y, (Saved(x.shape, (oh, ow, hp, wp), arg, channel_major) if train else None)


def backward(layer, saved, dy):
    """dx (the input's layout)."""
    xp = array_module(dy)
    (n, c, h, w), (oh, ow, _, _) = saved.x_shape, saved.geometry
    dy = layout.to_channel_major(dy) if saved.channel_major else xp.ascontiguousarray(dy)
    dx = layout.empty_as(saved.x_shape, dy.dtype, saved.channel_major, xp)
    cuda.launch("pool", "max_backward", dy.dtype, dx.size,
                (dy, saved.idx, dx, n * c, h, w, layer.k, layer.stride, layer.pad, oh, ow))
    return dx
