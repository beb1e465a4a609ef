"""Conv2D on the kernel route (CuPy arrays, ``layers/cuda/conv.cu``), with channel-major
activations as on the CPU (``layers/layout.py``): the output's rows (O, N*OH*OW) are what the
convolution's one 2-D GEMM writes, so no layout pass follows it. Where an in-place ReLU follows
(``Conv2D.fuse_relu``, set by ``Sequential``), the bias pass rectifies too: y = max(Y + b, 0)
in one pass, and the ReLU only keeps y for its mask.

General route: col = im2col(x) (rows (c, i, j), columns (n, oh, ow)) in a column buffer that
every convolution of the process shares (the largest one's size: a full batch's columns kept
per layer would take several GB for GoogLeNet at batch 128), Y = W2d @ col straight into y's
rows, then + b (one kernel, ``bias_rows``). Backward computes col again in the shared buffer
(the forward's is gone by then), dW2d = dY @ col^T, db = the row sums of dY,
dcol = W2d^T @ dY (into col's memory) and dx = col2im(dcol), a gather per input pixel (no
atomics).

Pointwise route (1x1, stride 1, no padding): Y = W2d @ X on the (channels, N*H*W) rows, one
GEMM; backward dW2d = dY @ X^T and dX = W2d^T @ dY, two more.

``needs_input_grad = False`` skips dcol and col2im (or dX).
"""
from typing import NamedTuple

import numpy as np

from layers import cuda, layout
from layers.backend import array_module

_SHARED = {}      # (array module, device, dtype) -> the column buffer every layer uses


class Saved(NamedTuple):
    """What a kernel-route forward keeps for backward (training only)."""
    x: object        # the input, channel-major


def forward(layer, x, train):
    """y (channel-major) and, when ``train``, the ``Saved`` state."""
    xp = array_module(x)
    x = layout.to_channel_major(x)
    y = layout.empty(layer.out_shape(x.shape), x.dtype, xp)
    w2d, yr = layer.params["W"].reshape(layer.out_ch, -1), layout.rows(y)
    xp.matmul(w2d, layout.rows(x) if layer.pointwise else _columns(layer, x, xp), out=yr)
    if "b" in layer.params:                               # + b, and ReLU in the same pass
        cuda.launch("elementwise", "bias_rows", y.dtype, yr.size,
                    (yr, layer.params["b"], yr.shape[0], yr.shape[1], int(layer.fuse_relu)))
    elif layer.fuse_relu:
        xp.maximum(yr, 0, out=yr)
    return y, (Saved(x) if train else None)


def backward(layer, saved, dy):
    """dx (channel-major; None unless ``layer.needs_input_grad``); writes the layer's grads."""
    xp, x, o = array_module(dy), saved.x, layer.out_ch
    dyr = layout.rows(layout.to_channel_major(dy))
    w2d = layer.params["W"].reshape(o, -1)
    col = layout.rows(x) if layer.pointwise else _columns(layer, x, xp)
    xp.matmul(dyr, col.T, out=layer.grads["W"].reshape(o, -1))
    if "b" in layer.grads:
        layer.grads["b"][...] = dyr.sum(axis=1)
    if not layer.needs_input_grad:
        return None
    dx = layout.empty(x.shape, x.dtype, xp)
    if layer.pointwise:
        xp.matmul(w2d.T, dyr, out=layout.rows(dx))
        return dx
    xp.matmul(w2d.T, dyr, out=col)                       # dcol, in the shared buffer
    n, c, h, w = x.shape
    _, _, oh, ow = dy.shape
    cuda.launch("conv", "col2im", x.dtype, dx.size,
                (col, dx, n, c, h, w, layer.k, layer.stride, layer.pad, oh, ow,
                 *_strides(dx)))
    return dx


def _columns(layer, x, xp):
    """im2col of the channel-major ``x``, in the shared column buffer: (C*k*k, N*OH*OW)."""
    n, c, h, w = x.shape
    _, _, oh, ow = layer.out_shape(x.shape)
    kk, positions = c * layer.k * layer.k, n * oh * ow
    col = _shared(xp, x.dtype, kk * positions).reshape(kk, positions)
    cuda.launch("conv", "im2col", x.dtype, c * positions,     # one thread per (c, position)
                (x, col, n, c, h, w, layer.k, layer.stride, layer.pad, oh, ow, *_strides(x)))
    return col


def _strides(a):
    """(between samples, between channels) of the (N, C, H, W) array ``a``, in elements."""
    return a.strides[0] // a.itemsize, a.strides[1] // a.itemsize


def _shared(xp, dtype, size):
    """The first ``size`` elements of the column buffer shared on this device."""
    device = xp.cuda.Device().id if xp is not np else -1
    key = (xp.__name__, device, np.dtype(dtype))
    buf = _SHARED.get(key)
    if buf is None or buf.size < size:
        buf = _SHARED[key] = xp.empty(size, dtype)
    return buf[:size]
