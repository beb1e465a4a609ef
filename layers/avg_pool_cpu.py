"""AvgPool2D on the CPU (NumPy): k*k strided slice adds over a zero-padded workspace, then one
multiply by 1 / pool_size; backward adds dy / pool_size into every tap's strided view of a
zeroed padded workspace and crops it. Kept simple (GoogLeNet's auxiliary heads are its only
users); large inputs are split into sample ranges over ``parallel.workers()`` threads.
"""
from typing import NamedTuple

import numpy as np

from layers import parallel


class Saved(NamedTuple):
    """What a CPU forward keeps for backward (training only)."""
    x_shape: tuple          # (N, C, H, W)
    geometry: tuple         # (OH, OW, Hp, Wp)
    inv_size: np.ndarray    # (OH, OW): 1 / pool_size


def _sizes(out, k, stride, pad, size, dtype):
    """Per output index along one axis: the window length clipped to the padded input."""
    start = np.arange(out) * stride - pad
    return (np.minimum(start + k, size + pad) - start).astype(dtype)


def _windows(layer, a, oh, ow):
    """The k*k strided (N, C, OH, OW) views of the padded array ``a``, one per tap."""
    s = layer.stride
    return [a[:, :, i:i + (oh - 1) * s + 1:s, j:j + (ow - 1) * s + 1:s]
            for i in range(layer.k) for j in range(layer.k)]


def forward(layer, x, train):
    """y (C order) and, when ``train``, the ``Saved`` state."""
    n, c, h, w = x.shape
    k, s, p = layer.k, layer.stride, layer.pad
    oh, ow, hp, wp = layer.geometry(x.shape)
    xpad = layer.workspace("xpad", (n, c, hp, wp), x.dtype, np)
    if layer._zeroed is None or layer._zeroed[0] is not xpad or layer._zeroed[1:] != (h, w):
        xpad.fill(0)                       # the interior is overwritten, the border stays
        layer._zeroed = (xpad, h, w)
    inv_size = 1 / (_sizes(oh, k, s, p, h, x.dtype)[:, None] * _sizes(ow, k, s, p, w, x.dtype))
    y = np.empty((n, c, oh, ow), dtype=x.dtype)

    def run(start, stop, worker):
        xpad[start:stop, :, p:p + h, p:p + w] = x[start:stop]
        views = _windows(layer, xpad[start:stop], oh, ow)
        yw = y[start:stop]
        yw[...] = views[0]
        for v in views[1:]:
            yw += v
        yw *= inv_size
    parallel.split_work(np, n, run, x.nbytes)
    return y, (Saved(x.shape, (oh, ow, hp, wp), inv_size) if train else None)


def backward(layer, saved, dy):
    """dx (C order); scales ``dy`` in place."""
    (n, c, h, w), (oh, ow, hp, wp) = saved.x_shape, saved.geometry
    p = layer.pad
    dpad = layer.workspace("dxpad", (n, c, hp, wp), dy.dtype, np)
    dx = np.empty(saved.x_shape, dtype=dy.dtype)

    def run(start, stop, worker):
        dw, dyw = dpad[start:stop], dy[start:stop]
        dw.fill(0)
        dyw *= saved.inv_size
        for v in _windows(layer, dw, oh, ow):
            v += dyw
        dx[start:stop] = dw[:, :, p:p + h, p:p + w]
    parallel.split_work(np, n, run, dx.nbytes)
    return dx
