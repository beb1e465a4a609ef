"""Residual container (He et al. 2016): y = body(x) + shortcut(x), the shortcut the identity
when none is given (a projection, such as a 1x1 convolution with BatchNorm, otherwise).

Backward sends dy to both branches and adds what they return:

    dx = body.backward(dy) + shortcut.backward(dy)        (+ dy itself for the identity)

Each branch may overwrite the dy it is given (the layer API), so the shortcut gets a copy. The
sum and that copy live in buffers kept across steps, in the layout of the body's output and of
dy (channel-major on the CPU, ``layers/layout.py``).

An in-place ReLU after the block (``Sequential`` calls ``relu.fuse``) is fused into it on the
CPU: the sum is rectified as it is made, and backward masks dy as it copies it
(``layers/residual_cpu.py``); on the GPU the ReLU keeps its own kernels.
"""
from layers import layout, residual_cpu
from layers.backend import array_module, uses_kernels
from layers.base import Layer


class Residual(Layer):
    fuse_relu = False       # an in-place ReLU follows (set by Sequential: ``relu.fuse``)

    def __init__(self, body, shortcut=None):
        super().__init__()
        self.body, self.shortcut = body, shortcut

    def children(self):
        return [self.body] + ([self.shortcut] if self.shortcut is not None else [])

    def forward(self, x, train=True):
        y = self.body.forward(x, train)
        s = x if self.shortcut is None else self.shortcut.forward(x, train)
        if y.shape != s.shape:
            raise ValueError(f"{self.name}: the body gives {y.shape}, the shortcut {s.shape}; "
                             f"they must agree to be added")
        out = self._like(y, "sum")
        self.save(out if train else None)          # backward's mask, where fused: out > 0
        xp = array_module(y)
        if self.rectifies(xp):
            return residual_cpu.add_relu(y, s, out)
        xp.add(y, s, out=out)
        return out

    def rectifies(self, xp):
        """Whether this block applies the fused ReLU (forward, and its mask in backward) for
        arrays of ``xp``: with ``fuse_relu``, on the CPU."""
        return self.fuse_relu and not uses_kernels(xp)

    masks = rectifies

    def backward(self, dy):
        out = self.saved()
        copy = self._like(dy, "dy")
        if self.masks(array_module(dy)):
            residual_cpu.mask_and_copy(self, dy, out, copy)
        else:
            copy[...] = dy
        dx = self.body.backward(dy)
        dx += copy if self.shortcut is None else self.shortcut.backward(copy)
        return dx

    def _like(self, a, key):
        """A buffer kept across calls with ``a``'s shape and dtype, channel-major if ``a`` is."""
        xp = array_module(a)
        if layout.is_channel_major(a):
            n, c = a.shape[:2]
            return self.workspace(key, (c, n) + a.shape[2:], a.dtype, xp).swapaxes(0, 1)
        return self.workspace(key, a.shape, a.dtype, xp)
