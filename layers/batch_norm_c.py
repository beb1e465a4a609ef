"""BatchNorm2D on the CPU through its C passes (``layers/c/batch_norm.c``), on x's
channel-major rows (``layers/layout.py``), the channels split over ``parallel.workers()``
threads. The equations are ``layers/batch_norm.py``'s, in two passes each way:

    forward   moments (the means of x and x^2 per channel: one read of x; a second where the
              recentring asks for the moments about the mean), then
              y = max(x * scale + offset, 0) (ReLU fused) or x * scale + offset
    backward  dY = dy * (y > 0) (ReLU fused) in place, with sum(dY) and sum(dY * x) per
              channel in the same read, then dx = a * dY + b * x + c into dy's memory

against four reads and two writes forward (and a ReLU's read and write) on the NumPy route.
Sums are float32 (double) vector partials over segments of whole samples, added in float64,
as on the NumPy route; a channel's statistics do not depend on the number of workers.
Synchronized BatchNorm averages the same moments and sums over the workers.
"""
import numpy as np

from layers import c as ckernels
from layers import parallel

_ptr, _long = ckernels.pointer, ckernels.integer


def library(dtype):
    """The library for ``dtype``, or None (``layers.c.library``)."""
    return ckernels.library("batch_norm", dtype)


def _split(layer, nbytes, fn):
    """``fn(c0, c1)`` over channel ranges, one per worker."""
    parallel.split_work(np, layer.ch, lambda c0, c1, worker: fn(c0, c1), nbytes)


def moments(layer, lib, xr, seg):
    """``center -> (means of v, means of v^2)`` per channel, v = x - center, in float64."""
    m = xr.shape[1]

    def run(center):
        mean, sq = np.empty(layer.ch), np.empty(layer.ch)
        center = None if center is None else np.ascontiguousarray(center, xr.dtype)
        _split(layer, xr.nbytes, lambda c0, c1: lib.bn_moments(
            _ptr(xr), _long(m), _ptr(center), _ptr(mean), _ptr(sq), _long(seg), _long(c0),
            _long(c1)))
        return mean, sq
    return run


def forward(layer, stats, xr, yr, seg):
    """Fill ``stats`` (training) and write y's rows."""
    lib = library(xr.dtype)
    if stats.train:
        moment = moments(layer, lib, xr, seg)
        stats.mean[...], stats.var[...] = layer._batch_stats(
            moment if layer.sync is None else layer._synced(moment), xr.dtype, np)
    scale, offset = (np.ascontiguousarray(v, xr.dtype) for v in layer._affine(stats,
                                                                             slice(None)))
    m = xr.shape[1]
    _split(layer, xr.nbytes, lambda c0, c1: lib.bn_forward(
        _ptr(xr), _ptr(yr), _ptr(scale), _ptr(offset), _long(m), _long(layer.fuse_relu),
        _long(c0), _long(c1)))


def backward(layer, stats, xr, yr, dyr, seg):
    """dx into ``dyr`` (rows of dy); the layer's grads. ``yr``: the rectified output's rows
    when the ReLU is fused, else None."""
    lib = library(xr.dtype)
    m = xr.shape[1]
    sums, dots = np.empty(layer.ch), np.empty(layer.ch)
    _split(layer, xr.nbytes, lambda c0, c1: lib.bn_sums(
        _ptr(dyr), _ptr(xr), _ptr(yr), _long(m), _ptr(sums), _ptr(dots), _long(seg),
        _long(c0), _long(c1)))
    if layer.sync is not None and stats.train:
        coefficients = layer._synced_coefficients(stats, sums, dots, m)
    else:
        coefficients = layer._coefficients(stats, sums, dots, slice(None), m)
    a, b, c = (np.ascontiguousarray(v, xr.dtype) for v in coefficients)
    train = stats.train
    _split(layer, xr.nbytes, lambda c0, c1: lib.bn_backward(
        _ptr(dyr), _ptr(xr), _ptr(a), _ptr(b if train else None),
        _ptr(c if train else None), _long(m), _long(c0), _long(c1)))
