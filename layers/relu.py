"""ReLU: y = max(x, 0); dx = dy * (y > 0).

``inplace=True`` overwrites the input with the output (saving a buffer and a memory pass);
use it only where nothing else keeps the input, as after a convolution or BatchNorm, which
keep their own inputs, not their outputs.

On the CPU, arrays that fill one dense block of memory in some axis order (C order, the
channel-major activations of ``layers/layout.py``, and the channel slices of those that
``Concat`` hands its branches) are taken as flat runs, split over ``parallel.workers()`` threads
and, in backward, swept in cache-sized tiles so that the (y > 0) mask stays in cache. Other
views take one NumPy call.

An in-place ReLU right after a Conv2D, a BatchNorm2D or a Residual in a ``Sequential`` is
fused into that layer (``fuse``): on the kernel route into the convolution's bias pass (the
ReLU's forward then only keeps y, already max(x, 0)); on the CPU into BatchNorm's passes and
the residual add, forward and backward (the ReLU then passes x and dy on).
"""
import numpy as np

from layers import backend, cuda, layout, parallel
from layers.backend import array_module
from layers.base import Layer

BLOCK = 1 << 17       # backward: elements per tile (bench/README.md)


def flat_pair(a, b):
    """1-D views of ``a`` and ``b`` in one memory order (position i of both is the same
    element), when both are dense and laid out alike; else None."""
    if a.shape != b.shape or a.strides != b.strides:
        return None
    fa, fb = layout.dense(a), layout.dense(b)
    return None if fa is None or fb is None else (fa, fb)


def mask_blocks(layer, df, yf, start, stop, worker, copy=None):
    """df[start:stop] *= (yf[start:stop] > 0) in place (1-D NumPy arrays), in blocks of BLOCK
    with ``layer``'s mask workspace for ``worker``; each masked block also into ``copy`` when
    given, while it is in cache."""
    mask = layer.workspace(("mask", worker), (BLOCK,), np.bool_, np)
    for b0 in range(start, stop, BLOCK):
        b1 = min(b0 + BLOCK, stop)
        m, d = mask[:b1 - b0], df[b0:b1]
        np.greater(yf[b0:b1], 0, out=m)
        d *= m
        if copy is not None:
            copy[b0:b1] = d


def fuse(before, after):
    """Let ``before`` (a layer with ``fuse_relu``: Conv2D, BatchNorm2D) rectify its own output
    when ``after`` is an in-place ReLU, which nothing but ``after`` reads."""
    if isinstance(after, ReLU) and after.inplace and hasattr(before, "fuse_relu"):
        before.fuse_relu = True
        after.fused = before


class ReLU(Layer):
    fused = None    # the layer before, which may rectify for it (``fuse``): where its
                    # ``rectifies(xp)``, forward passes x on; where its ``masks(xp)`` too,
                    # backward passes dy on

    def __init__(self, inplace=False):
        super().__init__()
        self.inplace = inplace

    def forward(self, x, train=True):
        self.check_input(x, max(getattr(x, "ndim", 0), 1))
        xp = array_module(x)
        if self.fused is not None and self.fused.rectifies(xp):
            self.save(x)                           # already max(x, 0)
            return x
        y = x if self.inplace else xp.empty_like(x)
        self.save(y)                           # backward's mask is y > 0
        flat = flat_pair(x, y)
        if flat is None:
            return xp.maximum(x, 0, out=y)
        xf, yf = flat

        def run(start, stop, worker):
            xp.maximum(xf[start:stop], 0, out=yf[start:stop])
        parallel.split_work(xp, xf.size, run, x.nbytes)
        return y

    def backward(self, dy):
        y = self.saved()
        xp = array_module(dy)
        if self.fused is not None and self.fused.masks(xp):
            return dy                              # the layer before masks it
        flat = flat_pair(dy, y)
        if backend.uses_kernels(xp) and flat is not None:     # any dense layout, alike
            cuda.launch("elementwise", "relu_backward", dy.dtype, dy.size, (*flat, dy.size))
            return dy
        if flat is None:
            dy *= y > 0
            return dy
        df, yf = flat
        parallel.split_work(xp, df.size, lambda start, stop, worker: mask_blocks(
            self, df, yf, start, stop, worker), dy.nbytes)
        return dy
