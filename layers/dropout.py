"""Inverted dropout (Srivastava et al. 2014).

Training: y = x * m / (1 - ratio) with m ~ Bernoulli(1 - ratio) drawn per element; evaluation:
y = x (the input itself is returned). Backward: dx = dy * m / (1 - ratio).

The layer keeps its own ``numpy.random.Generator`` (``self.rng``); ``reseed(seed)`` restarts
it, so a test can reproduce a mask. On the CPU the mask's uniforms come from it; on the kernel
route one number drawn from it keys the draw, and the GPU makes the uniforms itself
(``dropout_forward``: a hash of the key and the element's index), so no mask crosses from the
host and the generator's state alone is what a checkpoint keeps, on either route.
"""
from typing import NamedTuple

import numpy as np

from layers import backend, cuda, layout
from layers.backend import array_module
from layers.base import Layer


class Saved(NamedTuple):
    """What a forward keeps for backward: the scaled mask m / (1 - ratio), None after an
    evaluation forward (backward then passes dy through)."""
    mask: object


class Dropout(Layer):
    def __init__(self, ratio, seed=None):
        super().__init__()
        if not 0.0 <= ratio < 1.0:
            raise ValueError(f"Dropout: ratio must be in [0, 1), got {ratio}")
        self.ratio = float(ratio)
        self.reseed(seed)

    def reseed(self, seed):
        """Restart the mask generator from ``seed`` (None: fresh OS entropy)."""
        self.rng = np.random.default_rng(seed)

    def forward(self, x, train=True):
        self.check_input(x, max(getattr(x, "ndim", 0), 1))
        if not train:
            self.save(Saved(None))
            return x
        xp = array_module(x)
        if backend.uses_kernels(xp) and layout.dense(x) is not None:
            y, mask = layout.like(x), layout.like(x)
            key = int(self.rng.integers(0, 1 << 63))
            cuda.launch("elementwise", "dropout_forward", x.dtype, x.size,
                        (layout.dense(x), layout.dense(y), layout.dense(mask), self.ratio, key,
                         x.size))
            self.save(Saved(mask))
            return y
        if xp is np:
            mask = self.workspace("mask", x.shape, x.dtype)
            self.rng.random(out=mask, dtype=x.dtype)
        else:
            mask = xp.asarray(self.rng.random(x.shape, dtype=x.dtype))   # CuPy, any strides
        # mask = [u >= ratio] / (1 - ratio), u ~ U[0, 1)
        xp.greater_equal(mask, self.ratio, out=mask)
        mask *= 1.0 / (1.0 - self.ratio)
        self.save(Saved(mask))
        return x * mask

    def backward(self, dy):
        mask = self.saved(Saved).mask
        if mask is not None:
            dy *= mask
        return dy
