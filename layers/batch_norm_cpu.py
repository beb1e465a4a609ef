"""BatchNorm2D on the CPU, on x's channel-major rows (``layers/layout.py``; an input in
another layout is copied once): each channel is one contiguous row of M elements. Statistics
come from float32 partial sums over segments of the rows (``segment_elems`` at most) merged in
float64, with the layer's recentring (``BatchNorm2D._batch_stats``). A forward writes
y = x * scale + offset (rectified when the ReLU after the layer is fused into it:
``BatchNorm2D.fuse_relu``); backward writes dx = a * dy + b * x + c into dy's memory (dy
first zeroed where y <= 0 when the ReLU is fused).

Two ways, the same equations: the C passes (``layers/batch_norm_c.py``) where the library is
built and ``BatchNorm2D.c_passes`` is on, else NumPy, blocks of whole channels of about
``block_elems`` elements (fewer, longer NumPy calls). Channel ranges are split over
``parallel.workers()`` threads, each with its own scratch: the result does not depend on the
number of workers (up to NumPy's recentring test, taken per block).
"""
from typing import NamedTuple

import numpy as np

from layers import batch_norm_c, layout, parallel


class Saved(NamedTuple):
    """What a CPU forward keeps for backward (training and evaluation)."""
    stats: tuple          # the layer's ``Stats``: train, mean, var, 1 / std
    x_rows: np.ndarray    # x's channel-major rows (C, M)
    segment: int          # elements per float32 partial sum (whole samples)
    y_rows: object        # the rectified output's rows when the ReLU is fused, else None


def _segment(n, per_sample, limit):
    """Length of the segments a channel's row of n * per_sample elements is summed in: whole
    samples, as many as divide n and fit ``limit`` (at least one sample)."""
    k = max(1, min(n, limit // max(1, per_sample)))
    while n % k:
        k -= 1
    return k * per_sample


def _c_route(layer, dtype):
    """Whether this call takes the C passes (``layers/batch_norm_c.py``)."""
    return layer.c_passes and batch_norm_c.library(dtype) is not None


def forward(layer, x, train):
    """y (channel-major) and the ``Saved`` state."""
    stats = layer._stats(train, np)
    x = layout.to_channel_major(x)
    y = layout.empty(x.shape, x.dtype)
    xr, yr = layout.rows(x), layout.rows(y)
    seg = _segment(x.shape[0], xr.shape[1] // x.shape[0], layer.segment_elems)
    if _c_route(layer, x.dtype):
        batch_norm_c.forward(layer, stats, xr, yr, seg)
    else:
        _forward_numpy(layer, stats, xr, yr, seg)
    return y, Saved(stats, xr, seg, yr if layer.fuse_relu else None)


def _forward_numpy(layer, stats, xr, yr, seg):
    """Statistics and y = x * scale + offset (rectified when the ReLU is fused) a block of
    channel rows at a time (synchronized: every channel's statistics first, averaged over the
    workers)."""
    per_block = stats.train and layer.sync is None
    if stats.train and not per_block:
        stats.mean[...], stats.var[...] = layer._batch_stats(
            layer._synced(lambda center: _all_moments(layer, xr, center, seg)), xr.dtype, np)

    def run(c0, c1, worker):
        for b0, b1 in _channel_blocks(layer, c0, c1, xr.shape[1]):
            xb, yb, cs = xr[b0:b1], yr[b0:b1], slice(b0, b1)
            if per_block:
                stats.mean[cs], stats.var[cs] = layer._batch_stats(
                    lambda center: _moments(layer, xb, center, worker, seg), xr.dtype, np)
            scale, offset = layer._affine(stats, cs)
            np.multiply(xb, scale.astype(xr.dtype)[:, None], out=yb)
            yb += offset.astype(xr.dtype)[:, None]
            if layer.fuse_relu:
                np.maximum(yb, 0, out=yb)
    parallel.split_work(np, layer.ch, run, xr.nbytes)


def backward(layer, saved, dy):
    """dx (channel-major), written into ``dy``'s memory (or its channel-major copy); writes the
    layer's grads. With the ReLU fused, dy first counts only where y > 0."""
    dy = layout.to_channel_major(dy)
    dyr = layout.rows(dy)
    if _c_route(layer, dy.dtype):
        batch_norm_c.backward(layer, saved.stats, saved.x_rows, saved.y_rows, dyr,
                              saved.segment)
    else:
        _backward_numpy(layer, saved, dyr)
    return dy


def _backward_numpy(layer, saved, dyr):
    """dx = a * dy + b * x + c into ``dyr``, a block of channels at a time (synchronized:
    every channel's sums first, averaged over the workers)."""
    xr, yr, m = saved.x_rows, saved.y_rows, saved.x_rows.shape[1]
    if yr is not None:
        parallel.split_work(np, layer.ch, lambda c0, c1, worker: np.multiply(
            dyr[c0:c1], yr[c0:c1] > 0, out=dyr[c0:c1]), dyr.nbytes)
    synced = None
    if layer.sync is not None and saved.stats.train:
        sums, dots = _all_sums(layer, dyr, xr, saved.segment)
        synced = layer._synced_coefficients(saved.stats, sums, dots, m)

    def run(c0, c1, worker):
        for b0, b1 in _channel_blocks(layer, c0, c1, m):
            dyb, xb = dyr[b0:b1], xr[b0:b1]
            if synced is None:
                sums, dots = _segment_sums(layer, dyb, xb, worker, saved.segment)
                coefficients = layer._coefficients(saved.stats, sums, dots, slice(b0, b1), m)
            else:
                coefficients = (v[b0:b1] for v in synced)
            a, b, c = (v.astype(dyr.dtype)[:, None] for v in coefficients)
            dyb *= a
            if saved.stats.train:
                t = np.multiply(xb, b, out=_scratch(layer, "term", xb, worker))
                t += c
                dyb += t
    parallel.split_work(np, layer.ch, run, dyr.nbytes)


def _block_channels(layer, m):
    """Channels per block: rows of m elements, about ``block_elems`` in all."""
    return max(1, min(layer.ch, layer.block_elems // m))


def _channel_blocks(layer, c0, c1, m):
    """Ranges of whole channels covering [c0, c1), ``_block_channels`` each."""
    cb = _block_channels(layer, m)
    return [(b0, min(b0 + cb, c1)) for b0 in range(c0, c1, cb)]


def _scratch(layer, key, block, worker):
    """Worker's scratch ``key`` shaped like ``block`` (rows of one channel block)."""
    cb, m = block.shape
    return layer.workspace((key, worker), (_block_channels(layer, m), m), block.dtype)[:cb]


def _segment_sums(layer, a, b, worker, seg):
    """Per-channel float64 sums of a and of a * b over a block of rows (cb, M): float32
    partial sums over segments of ``seg`` elements, the segments added in float64."""
    cb, m = a.shape
    a3 = a.reshape(cb, m // seg, seg)
    part = layer.workspace(("parts", worker), (_block_channels(layer, m), m // seg),
                           a.dtype)[:cb]
    np.einsum("csl->cs", a3, out=part)
    sums = part.sum(axis=1, dtype=np.float64)
    np.vecdot(a3, b.reshape(a3.shape), out=part)
    return sums, part.sum(axis=1, dtype=np.float64)


def _all_moments(layer, xr, center, seg):
    """``_moments`` of every channel (rows ``xr``), the blocks split over the workers."""
    mean, sq = np.empty(layer.ch), np.empty(layer.ch)

    def run(c0, c1, worker):
        for b0, b1 in _channel_blocks(layer, c0, c1, xr.shape[1]):
            part = None if center is None else center[b0:b1]
            mean[b0:b1], sq[b0:b1] = _moments(layer, xr[b0:b1], part, worker, seg)
    parallel.split_work(np, layer.ch, run, xr.nbytes)
    return mean, sq


def _all_sums(layer, dyr, xr, seg):
    """``_segment_sums`` of dy and dy * x for every channel, the blocks split over the
    workers."""
    sums, dots = np.empty(layer.ch), np.empty(layer.ch)

    def run(c0, c1, worker):
        for b0, b1 in _channel_blocks(layer, c0, c1, xr.shape[1]):
            sums[b0:b1], dots[b0:b1] = _segment_sums(layer, dyr[b0:b1], xr[b0:b1], worker, seg)
    parallel.split_work(np, layer.ch, run, xr.nbytes)
    return sums, dots


def _moments(layer, xb, center, worker, seg):
    """Per-channel means of v and v^2, v = xb - center (center per channel in x's dtype,
    or None), in float64."""
    v = xb
    if center is not None:
        scratch = _scratch(layer, "centred", xb, worker)
        v = np.subtract(xb, center[:, None], out=scratch)
    sums, squares = _segment_sums(layer, v, v, worker, seg)
    return sums / xb.shape[1], squares / xb.shape[1]
