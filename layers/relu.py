"""ReLU: y = max(x, 0); dx = dy * (y > 0).

``inplace=True`` overwrites the input with the output (saving a buffer and a memory pass);
use it only where nothing else keeps the input, as after a convolution or BatchNorm, which
keep their own inputs, not their outputs.

On the CPU, large contiguous arrays are split by samples over ``parallel.workers()`` threads.
"""
import numpy as np

from layers import parallel
from layers.base import Layer, get_array_module

BLOCK = 1 << 15       # backward: elements per step, so that the (y > 0) mask stays in cache


class ReLU(Layer):
    def __init__(self, inplace=False):
        super().__init__()
        self.inplace = inplace

    def forward(self, x, train=True):
        self.check_input(x, max(getattr(x, "ndim", 0), 1))
        xp = get_array_module(x)
        if x.ndim == 0 or not x.flags.c_contiguous:
            self.y = xp.maximum(x, 0, out=x if self.inplace else None)
            return self.y
        y = x if self.inplace else xp.empty_like(x)

        def run(start, stop, worker):
            xp.maximum(x[start:stop], 0, out=y[start:stop])
        parallel.split_work(xp, x.shape[0], run, x.nbytes)
        self.y = y
        return y

    def backward(self, dy):
        xp = get_array_module(dy)
        if dy.ndim == 0 or not (dy.flags.c_contiguous and self.y.flags.c_contiguous):
            dy *= self.y > 0
            return dy
        y = self.y

        per_sample = y.size // max(y.shape[0], 1)
        dflat, yflat = dy.reshape(-1), y.reshape(-1)

        def run(start, stop, worker):
            mask = self.workspace(("mask", worker), (BLOCK,), np.bool_, xp)
            for b0 in range(start * per_sample, stop * per_sample, BLOCK):
                b1 = min(b0 + BLOCK, stop * per_sample)
                m = mask[:b1 - b0]
                xp.greater(yflat[b0:b1], 0, out=m)
                dflat[b0:b1] *= m
        parallel.split_work(xp, dy.shape[0], run, dy.nbytes)
        return dy
