"""LRN on the kernel route (``layers/cuda/lrn.cu``): forward writes y and the scale, one thread
per element; backward recomputes y / scale from x and the scale, each dx reading its
neighbours' dy (so dx goes into a new array). A channel-major input (``layers/layout.py``) is
taken as one (1, C, N*H*W) block, a C-order one as (N, C, H*W); y and dx keep its layout."""
from typing import NamedTuple

from layers import cuda, layout
from layers.backend import array_module


class Saved(NamedTuple):
    """What a kernel-route forward keeps for backward (training only)."""
    x3: object           # the input as a C-contiguous (N', C, L') block
    scale: object        # k + (alpha / size) * the window sums of x^2, x3's shape
    channel_major: bool  # x3's form (``layout.channel_blocks``)


def forward(layer, x, train):
    """y (x's layout) and, when ``train``, the ``Saved`` state."""
    xp = array_module(x)
    x3, channel_major = layout.channel_blocks(x)
    y = xp.empty(x3.shape, dtype=x.dtype)
    scale = layer.workspace("scale_kernel", x3.shape, x3.dtype, xp)
    n, c, l = x3.shape
    cuda.launch("lrn", "lrn_forward", x3.dtype, y.size,
                (x3, y, scale, n, c, l, layer.lo, layer.hi, layer.alpha / layer.size,
                 layer.beta, layer.k))
    return layout.from_channel_blocks(y, x.shape, channel_major), \
        (Saved(x3, scale, channel_major) if train else None)


def backward(layer, saved, dy):
    """dx (the input's layout) from x, the saved scale and dy."""
    xp = array_module(dy)
    x3 = saved.x3
    n, c, l = x3.shape
    dx = xp.empty(x3.shape, x3.dtype)
    cuda.launch("lrn", "lrn_backward", x3.dtype, dx.size,
                (x3, saved.scale, layout.in_form(dy, saved.channel_major), dx, n, c, l,
                 layer.lo, layer.hi, 2 * layer.alpha * layer.beta / layer.size, layer.beta))
    return layout.from_channel_blocks(dx, dy.shape, saved.channel_major)
