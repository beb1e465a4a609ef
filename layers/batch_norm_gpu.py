"""BatchNorm2D on the kernel route (``layers/cuda/batch_norm.cu``): the per-channel sums as
``row_parts`` float64 partial sums per (n, c) row (added here), then one affine pass
y = x * scale + offset; backward takes the sums of dy and dy * x the same way and writes
dx = a * dy + b * x + c into dy's memory. A channel-major input (``layers/layout.py``) is one
(1, C, N*L) block of channel rows, a C-order one (N, C, L); y and dx keep its layout."""
from typing import NamedTuple

import numpy as np

from layers import cuda, layout
from layers.backend import array_module


class Saved(NamedTuple):
    """What a kernel-route forward keeps for backward (training and evaluation)."""
    stats: tuple          # the layer's ``Stats``: train, mean, var, 1 / std
    x3: object            # the input as a C-contiguous (N', C, L') block
    channel_major: bool   # x3's form (``layout.channel_blocks``)


def forward(layer, x, train):
    """y (C order) and the ``Saved`` state."""
    xp = array_module(x)
    stats = layer._stats(train, xp)
    x3, channel_major = layout.channel_blocks(x)
    if train:
        moments = lambda center: _moments(layer, x3, center, xp)  # noqa: E731
        stats.mean[...], stats.var[...] = layer._batch_stats(
            moments if layer.sync is None else layer._synced(moments), x.dtype, xp,
            centred=True)
    scale, offset = layer._affine(stats, slice(None))
    y = xp.empty(x3.shape, dtype=x.dtype)
    cuda.launch("batch_norm", "affine", x.dtype, y.size,
                (x3, y, scale.astype(x.dtype), offset.astype(x.dtype), *x3.shape))
    return layout.from_channel_blocks(y, x.shape, channel_major), \
        Saved(stats, x3, channel_major)


def backward(layer, saved, dy):
    """dx, written into (a C-contiguous copy of) ``dy``; writes the layer's grads."""
    xp = array_module(dy)
    x3 = saved.x3
    dy3 = layout.in_form(dy, saved.channel_major)
    n, c, l = dy3.shape
    sums, dots = _row_sums(layer, "row_grads", dy3, x3, xp)
    if layer.sync is not None and saved.stats.train:
        a, b, d = layer._synced_coefficients(saved.stats, sums, dots, n * l)
    else:
        a, b, d = layer._coefficients(saved.stats, sums, dots, slice(None), n * l)
    cuda.launch("batch_norm", "backward", dy3.dtype, dy3.size,
                (dy3, x3, a.astype(dy3.dtype), b.astype(dy3.dtype), d.astype(dy3.dtype),
                 n, c, l))
    return layout.from_channel_blocks(dy3, dy.shape, saved.channel_major)


def _row_sums(layer, kernel, a, b, xp):
    """Per-channel totals of ``kernel``'s two row sums over (N, L) (``row_parts`` partial sums
    per (n, c) row, added here), in float64."""
    n, c, l = a.shape
    first = layer.workspace("sums_kernel", (n, c, layer.row_parts), np.float64, xp)
    second = layer.workspace("squares_kernel", (n, c, layer.row_parts), np.float64, xp)
    cuda.launch("batch_norm", kernel, a.dtype, first.size,
                (a, b, first, second, n, c, l, layer.row_parts))
    return first.sum(axis=(0, 2)), second.sum(axis=(0, 2))


def _moments(layer, x3, center, xp):
    """Per-channel means of v and v^2, v = x - center (None: 0), in float64."""
    n, c, l = x3.shape
    sums, squares = _row_sums(
        layer, "row_moments", x3, xp.zeros(c, x3.dtype) if center is None else center, xp)
    return sums / (n * l), squares / (n * l)
