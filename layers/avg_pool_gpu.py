"""AvgPool2D on the kernel route (``layers/cuda/pool.cu``): one thread per output in forward,
and per input pixel in backward, which gathers dy / pool_size of the windows that hold it (no
atomics). The kernels take the (H, W) planes in memory order, so x may be C order or
channel-major (``layers/layout.py``) and y, dy and dx keep its layout."""
from typing import NamedTuple

from layers import cuda, layout
from layers.backend import array_module


class Saved(NamedTuple):
    """What a kernel-route forward keeps for backward (training only)."""
    x_shape: tuple        # (N, C, H, W)
    geometry: tuple       # (OH, OW, Hp, Wp)
    channel_major: bool   # the planes' order (x's layout)


def forward(layer, x, train):
    """y (x's layout) and, when ``train``, the ``Saved`` state."""
    xp = array_module(x)
    x = layout.dense_planes(x)
    n, c, h, w = x.shape
    oh, ow, hp, wp = layer.geometry(x.shape)
    channel_major = not x.flags.c_contiguous
    y = layout.empty_as((n, c, oh, ow), x.dtype, channel_major, xp)
    cuda.launch("pool", "avg_forward", x.dtype, y.size,
                (x, y, n * c, h, w, layer.k, layer.stride, layer.pad, oh, ow))
    return y, (Saved(x.shape, (oh, ow, hp, wp), channel_major) if train else None)


def backward(layer, saved, dy):
    """dx (the input's layout)."""
    xp = array_module(dy)
    (n, c, h, w), (oh, ow, _, _) = saved.x_shape, saved.geometry
    dy = layout.to_channel_major(dy) if saved.channel_major else xp.ascontiguousarray(dy)
    dx = layout.empty_as(saved.x_shape, dy.dtype, saved.channel_major, xp)
    cuda.launch("pool", "avg_backward", dy.dtype, dx.size,
                (dy, dx, n * c, h, w, layer.k, layer.stride, layer.pad, oh, ow))
    return dx
