"""LRN on the kernel route (``layers/cuda/lrn.cu``, C order): forward writes y and the scale,
one thread per element; backward recomputes y / scale from x and the scale, each dx reading its
neighbours' dy (so dx goes into a new array)."""
from typing import NamedTuple

from layers import cuda
from layers.backend import array_module


class Saved(NamedTuple):
    """What a kernel-route forward keeps for backward (training only)."""
    x3: object       # the input as a C-contiguous (N, C, H*W) array
    scale: object    # k + (alpha / size) * the window sums of x^2, x3's shape


def forward(layer, x, train):
    """y (C order) and, when ``train``, the ``Saved`` state."""
    xp = array_module(x)
    x3 = xp.ascontiguousarray(x.reshape(x.shape[0], x.shape[1], -1))
    y = xp.empty(x3.shape, dtype=x.dtype)
    scale = layer.workspace("scale_kernel", x3.shape, x3.dtype, xp)
    n, c, l = x3.shape
    cuda.launch("lrn", "lrn_forward", x3.dtype, y.size,
                (x3, y, scale, n, c, l, layer.lo, layer.hi, layer.alpha / layer.size,
                 layer.beta, layer.k))
    return y.reshape(x.shape), (Saved(x3, scale) if train else None)


def backward(layer, saved, dy):
    """dx (C order) from x, the saved scale and dy."""
    xp = array_module(dy)
    x3 = saved.x3
    n, c, l = x3.shape
    dx = xp.empty(x3.shape, x3.dtype)
    cuda.launch("lrn", "lrn_backward", x3.dtype, dx.size,
                (x3, saved.scale, xp.ascontiguousarray(dy.reshape(x3.shape)), dx, n, c, l,
                 layer.lo, layer.hi, 2 * layer.alpha * layer.beta / layer.size, layer.beta))
    return dx.reshape(dy.shape)
