"""ReLU: y = max(x, 0); dx = dy * (y > 0).

``inplace=True`` overwrites the input with the output (saving a buffer and a memory pass);
use it only where nothing else keeps the input, as after a convolution or BatchNorm, which
keep their own inputs, not their outputs.

On the CPU, arrays whose samples are each contiguous (whole arrays, and the channel slices
``Concat`` hands its branches in backward) are split by samples over ``parallel.workers()``
threads and, in backward, swept in cache-sized tiles so that the (y > 0) mask stays in cache.
"""
import numpy as np

from layers import cuda, parallel
from layers.base import Layer, get_array_module

BLOCK = 1 << 15       # backward: elements per tile


def sample_rows(a):
    """A NumPy ``a`` as an (N, per-sample) view when each sample's elements are contiguous
    (C order), else None (also for CuPy arrays, which take the plain path)."""
    if get_array_module(a) is not np or a.ndim == 0:
        return None
    step = a.itemsize
    for size, stride in zip(reversed(a.shape[1:]), reversed(a.strides[1:])):
        if size > 1 and stride != step:
            return None
        step *= size
    return a.reshape(a.shape[0], -1)      # a view: the strides were just checked


class ReLU(Layer):
    def __init__(self, inplace=False):
        super().__init__()
        self.inplace = inplace

    def forward(self, x, train=True):
        self.check_input(x, max(getattr(x, "ndim", 0), 1))
        xp = get_array_module(x)
        y = x if self.inplace else xp.empty_like(x)
        x2, y2 = sample_rows(x), sample_rows(y)
        if x2 is None or y2 is None:
            self.y = xp.maximum(x, 0, out=y)
            return self.y

        def run(start, stop, worker):
            xp.maximum(x2[start:stop], 0, out=y2[start:stop])
        parallel.split_work(xp, x.shape[0], run, x.nbytes)
        self.y = y
        return y

    def backward(self, dy):
        xp = get_array_module(dy)
        if cuda.wanted(xp) and dy.flags.c_contiguous and self.y.flags.c_contiguous:
            cuda.launch("elementwise", "relu_backward", dy.dtype, dy.size, (dy, self.y, dy.size))
            return dy
        d2, y2 = sample_rows(dy), sample_rows(self.y)
        if d2 is None or y2 is None:
            dy *= self.y > 0
            return dy
        if dy.flags.c_contiguous and self.y.flags.c_contiguous:
            tiles = self._flat_tiles(dy.reshape(-1), self.y.reshape(-1), d2.shape[1])
        else:
            tiles = self._sample_tiles(d2, y2)

        def run(start, stop, worker):
            mask = self.workspace(("mask", worker), (BLOCK,), np.bool_, xp)
            for d, y in tiles(start, stop):
                m = mask[:d.size].reshape(d.shape)
                xp.greater(y, 0, out=m)
                d *= m
        parallel.split_work(xp, dy.shape[0], run, dy.nbytes)
        return dy

    @staticmethod
    def _flat_tiles(d, y, per_sample):
        """Tiles of samples [start, stop) of contiguous arrays: BLOCK-long runs of the flat
        arrays, across sample boundaries."""
        def tiles(start, stop):
            hi = stop * per_sample
            for b0 in range(start * per_sample, hi, BLOCK):
                yield d[b0:min(b0 + BLOCK, hi)], y[b0:min(b0 + BLOCK, hi)]
        return tiles

    @staticmethod
    def _sample_tiles(d2, y2):
        """Tiles of samples [start, stop) of (N, per-sample) views: BLOCK-long pieces of one
        sample's row, or as many whole rows as fit in BLOCK elements."""
        per_sample = d2.shape[1]
        if per_sample >= BLOCK:
            def tiles(start, stop):
                for n in range(start, stop):
                    for b0 in range(0, per_sample, BLOCK):
                        yield d2[n, b0:b0 + BLOCK], y2[n, b0:b0 + BLOCK]
        else:
            rows = BLOCK // per_sample

            def tiles(start, stop):
                for n0 in range(start, stop, rows):
                    yield d2[n0:min(n0 + rows, stop)], y2[n0:min(n0 + rows, stop)]
        return tiles
