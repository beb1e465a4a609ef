"""Conv2D on the kernel route (CuPy arrays, ``layers/cuda/conv.cu``), everything in C order.

General route: col = im2col(x) for the whole batch (rows (c, i, j), columns (n, oh, ow)), one
GEMM Y = W2d @ col as (O, N*OH*OW), y = Y as NCHW (+ b, ``bias_add``); backward
dW2d = dY @ col^T, db = sum of dy, dcol = W2d^T @ dY (into col's memory, so col serves one
backward) and dx = col2im(dcol), a gather per input pixel (no atomics).

Pointwise route (1x1, stride 1, no padding): y[n] = W2d @ x[n] (+ b), one batched matmul;
backward dx[n] = W2d^T @ dy[n] (batched) and dW2d = dY @ X^T as one GEMM over the batch, dY and
X laid out (channels, N*H*W) first.
"""
from typing import NamedTuple, Optional

from layers import cuda
from layers.backend import array_module


class Saved(NamedTuple):
    """What a kernel-route forward keeps for backward (training only)."""
    x: object                # the input
    col: Optional[object]    # its columns (general route), None once a backward used them


def forward(layer, x, train):
    """y (C order) and, when ``train``, the ``Saved`` state."""
    xp = array_module(x)
    y = xp.empty(layer.out_shape(x.shape), dtype=x.dtype)
    col = None
    if layer.pointwise:
        _forward_pointwise(layer, x, y, xp)
    else:
        col = _forward_general(layer, x, y, xp)
    return y, (Saved(x, col) if train else None)


def backward(layer, saved, dy):
    """dx (C order); writes the layer's grads."""
    xp = array_module(dy)
    if layer.pointwise:
        return _backward_pointwise(layer, saved.x, dy.reshape(dy.shape[0], layer.out_ch, -1),
                                   xp)
    if saved.col is None:
        raise RuntimeError(f"{layer.name}: backward needs the columns of its last training "
                           f"forward")
    layer.save(saved._replace(col=None))      # this backward overwrites them with dcol
    return _backward_general(layer, saved.x, saved.col, dy, xp)


def _forward_general(layer, x, y, xp):
    """col = im2col(x) (``conv.cu``), Y = W2d @ col, y = Y as NCHW (+ b). Returns col."""
    n, c, h, w = x.shape
    o, oh, ow = y.shape[1:]
    k, kk, positions = layer.k, c * layer.k * layer.k, n * oh * ow
    col = layer.workspace("col_kernel", (kk, positions), x.dtype, xp)
    cuda.launch("conv", "im2col", x.dtype, col.size,
                (xp.ascontiguousarray(x), col, n, c, h, w, k, layer.stride, layer.pad, oh, ow))
    yt = layer.workspace("yt_kernel", (o, positions), x.dtype, xp)
    xp.matmul(layer.params["W"].reshape(o, kk), col, out=yt)
    y[...] = yt.reshape(o, n, oh, ow).transpose(1, 0, 2, 3)
    if "b" in layer.params:
        cuda.launch("elementwise", "bias_add", x.dtype, y.size,
                    (y, layer.params["b"], n, o, oh * ow))
    return col


def _backward_general(layer, x, col, dy, xp):
    """dW2d = dY @ col^T, db = sum of dy, dcol = W2d^T @ dY (into col's memory), and dx =
    col2im(dcol), a gather per input pixel (``conv.cu``)."""
    n, c, h, w = x.shape
    o, oh, ow = dy.shape[1:]
    k, kk, positions = layer.k, c * layer.k * layer.k, n * oh * ow
    dyt = layer.workspace("yt_kernel", (o, positions), dy.dtype, xp)
    dyt.reshape(o, n, oh, ow)[...] = dy.transpose(1, 0, 2, 3)
    xp.matmul(dyt, col.T, out=layer.grads["W"].reshape(o, kk))
    if "b" in layer.grads:
        layer.grads["b"][...] = dyt.sum(axis=1)
    if not layer.needs_input_grad:
        return None
    xp.matmul(layer.params["W"].reshape(o, kk).T, dyt, out=col)
    dx = xp.empty(x.shape, x.dtype)
    cuda.launch("conv", "col2im", x.dtype, dx.size,
                (col, dx, n, c, h, w, k, layer.stride, layer.pad, oh, ow))
    return dx


def _forward_pointwise(layer, x, y, xp):
    """1x1: y[n] = W2d @ x[n] (+ b), one batched matmul."""
    n, c = x.shape[:2]
    y3 = y.reshape(n, layer.out_ch, -1)
    xp.matmul(layer.params["W"].reshape(layer.out_ch, c), x.reshape(n, c, -1), out=y3)
    if "b" in layer.params:
        y3 += layer.params["b"][:, None]


def _backward_pointwise(layer, x, dy3, xp):
    """1x1: dx = W2d^T @ dy per sample (one batched GEMM), and dW2d = dY @ X^T as one GEMM over
    the whole batch, dY and X laid out (channels, N*H*W) first."""
    n, c, h, w = x.shape
    o, l = layer.out_ch, h * w
    w2d = layer.params["W"].reshape(o, c)
    dx = xp.matmul(w2d.T, dy3).reshape(x.shape) if layer.needs_input_grad else None
    dyt = layer.workspace("yt_kernel", (o, n * l), x.dtype, xp)
    dyt.reshape(o, n, l)[...] = dy3.transpose(1, 0, 2)
    xt = layer.workspace("xt_kernel", (c, n * l), x.dtype, xp)
    xt.reshape(c, n, l)[...] = x.reshape(n, c, l).transpose(1, 0, 2)
    xp.matmul(dyt, xt.T, out=layer.grads["W"].reshape(o, c))
    if "b" in layer.grads:
        layer.grads["b"][...] = dyt.sum(axis=1)
    return dx
