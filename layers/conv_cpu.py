"""Conv2D on the CPU: im2col + one GEMM per chunk of samples, over channel-major activations,
or, per pass, the direct route in C (``layers/conv_direct.py``) where ``conv_direct.takes``.

Input-side route: im2col lays the input windows out tap-major,
col[(i*k + j)*C + c, (n, oh, ow)] = xpad[n, c, oh*s + i, ow*s + j], so with
Wt = W.transpose(0, 2, 3, 1).reshape(O, k*k*C) the forward is y = Wt @ col and the backward
is dWt = dy @ col^T, db = sum of dy over (n, oh, ow), dx = col2im(Wt^T @ dy), col2im being the
adjoint of im2col (it adds every col entry back to the pixel it was read from). The bias rides
along in the GEMMs: Wt gets b as an extra column and col an extra row of ones, so y includes b
and dy @ col^T yields [dWt | db].

Tap-major rows make each tap's block of col one contiguous (C, n, OH, OW) array: for stride 1
and OW == W an output pixel and the input pixel a tap reads are a fixed flat offset apart, so
col2im is k*k shifted 1-D adds (NumPy adds contiguous runs much faster than strided 2-D slices).

A strided convolution whose output is the input divided by the stride (k3 s2 p1, GoogLeNet's
k7 s2 p3 on even sizes) gets the same flat treatment through polyphase planes: the input is
split once into its s*s sub-lattices (phase (a, b) holds pixels (s*r + a, s*q + b)), each the
size of the output, and every tap reads one phase at a fixed flat offset
(``window.conv_phase_taps``); col2im adds into phase planes and interleaves them into dx at the
end. Two strided copies per chunk replace k*k strided gathers and scatter-adds.

The batch is processed in chunks of g samples whose col (k*k*C, g*OH*OW) takes at most
``chunk_bytes`` (``Conv2D._chunk``): col stays in cache between im2col and the GEMM, and one
small workspace per worker suffices. Backward recomputes col chunk by chunk (writing a large
col to memory once and reading it back costs more than rebuilding it in cache), except for each
worker's last chunk, which forward left in that worker's workspace.

y and dx are channel-major (``layers/layout.py``): their (O, N*OH*OW) and (C, N*H*W) rows are
the GEMMs' own matrices, so a chunk's product is written straight into its columns, and dy (and
x on the routes that multiply it) are read the same way (an input in another layout is copied
once). Every route splits the samples over ``parallel.workers()`` threads
(layers/parallel.py): each worker takes a contiguous range, chunks it with its own workspaces
and writes its samples of y or dx; in backward it sums its own [dW | db] partial, and the
partials are added in worker order (deterministic). g is capped at one worker's share of the
batch, so every worker gets samples.

Output-side route (stride 1, pad < k, O not much above C; ``Conv2D._output_side``). A stride-1
convolution is also the transposed convolution (pad k-1-p) of the flipped kernel. With the
stack Wf (k*k*O, C), Wf[(i*k + j)*O + o, c] = W[o, c, k-1-i, k-1-j], and X = x as
(C, positions):

    forward   Z = Wf @ X,  y = col2im(Z, k, 1, k-1-p) + b
    backward  D = im2col(dy, k, 1, k-1-p),  dX = Wf^T @ D,  dWf = D @ X^T,  db = sum of dy

(y[o, oh, ow] = sum_{i,j} Z[tap (k-1-i, k-1-j), o] at input pixel (oh+i-p, ow+j-p): k*k
shifted adds of O rows, the adjoint of building D). No im2col of x: the copies are k*k O-sized
ones (Z, D), against k*k C-sized ones (col, and col2im in backward) on the input-side route,
for the same GEMM flops when OH*OW == H*W (the GEMMs run over the H*W input positions); both
backward GEMMs share D. With "same" padding (OW == W) im2col and col2im take their flat path,
every tap one shifted copy or add of whole channel rows.

Pointwise route: a 1x1, stride-1, unpadded convolution needs no im2col: Y = W2d @ X on the
channel-major rows, one GEMM per worker's range of samples.
"""
from typing import NamedTuple, Optional

import numpy as np

from layers import conv_direct, layout, parallel
from layers.window import conv_phase_taps, conv_taps


class Saved(NamedTuple):
    """What a CPU forward keeps for backward (training only)."""
    x: np.ndarray            # the input, channel-major where a route reads its rows
    cols: Optional[tuple]    # (g, workers) of the col chunks an input-side forward left in
                             # the workers' workspaces; None when there are none to reuse


def forward(layer, x, train):
    """y (channel-major) and, when ``train``, the ``Saved`` state."""
    y = layout.empty(layer.out_shape(x.shape), x.dtype)
    direct = conv_direct.takes(layer, x)
    if direct and conv_direct.planes(x) is None or not direct and (
            layer.pointwise or layer._output_side(max(layer.output_side_forward,
                                                      layer.output_side_backward), x.shape)):
        x = layout.to_channel_major(x)       # these routes read x as (C, N*H*W) rows; the
                                             # direct route any dense (H, W) planes
    cols = None
    if direct:
        conv_direct.forward(layer, x, y)
    elif layer.pointwise:
        _forward_pointwise(layer, x, y)
    elif layer._output_side(layer.output_side_forward, x.shape):
        _forward_output_side(layer, x, y)
    else:
        cols = _forward_input_side(layer, x, y)
    return y, (Saved(x, cols) if train else None)


def backward(layer, saved, dy):
    """dx (channel-major; None unless ``layer.needs_input_grad``); writes the layer's grads."""
    x = saved.x
    dy = layout.to_channel_major(dy)
    dx = layout.empty(x.shape, x.dtype) if layer.needs_input_grad else None
    if conv_direct.takes(layer, x, "backward"):
        conv_direct.backward(layer, x if conv_direct.planes(x) else layout.to_channel_major(x),
                             dy, dx)
    elif layer.pointwise:
        _backward_pointwise(layer, x, dy, dx)
    elif layer._output_side(layer.output_side_backward, x.shape):
        _backward_output_side(layer, x, dy, dx)
    else:
        layer.save(saved._replace(cols=None))     # this backward overwrites the col chunks
        _backward_input_side(layer, x, dy, dx, saved.cols)
    return dx


# -- workspaces and weights ----------------------------------------------------------------
def _ws(layer, name, worker, shape, dtype):
    """Worker ``worker``'s own workspace ``name``."""
    return layer.workspace((name, worker), shape, dtype, np)


def _sum_parts(parts):
    """Add the workers' partial sums into the first, in worker order; returns it."""
    total = parts[0]
    for part in parts[1:]:
        total += part
    return total


def _tap_major_weight(layer, dtype):
    """[Wt | b]: W.transpose(0, 2, 3, 1) as (O, k*k*C), then the bias as a last column
    (col gets a matching row of ones, so the GEMMs also add b and produce db)."""
    o, c, k, _ = layer.params["W"].shape
    kk = k * k * c
    wt = layer.workspace("Wt", (o, kk + ("b" in layer.params)), dtype, np)
    wt[:, :kk].reshape(o, k, k, c)[...] = layer.params["W"].transpose(0, 2, 3, 1)
    if "b" in layer.params:
        wt[:, kk] = layer.params["b"]
    return wt


def _flipped_stack(layer, dtype):
    """Wf (k*k*O, C): Wf[(i*k + j)*O + o, c] = W[o, c, k-1-i, k-1-j]."""
    o, c, k, _ = layer.params["W"].shape
    wf = layer.workspace("Wf", (k * k * o, c), dtype, np)
    wf.reshape(k, k, o, c)[...] = layer.params["W"].transpose(2, 3, 0, 1)[::-1, ::-1]
    return wf


def _phases(layer, worker, g, x):
    """Worker ``worker``'s polyphase scratch for g samples, when im2col/col2im can use it
    (a strided convolution with OH = H/s, OW = W/s; see ``window.conv_phase_taps``), else
    None."""
    _, c, h, w = x.shape
    if conv_phase_taps(layer.k, layer.stride, layer.pad, h, w) is None:
        return None
    return _ws(layer, "phases", worker, (c * g * h * w,), x.dtype)


# -- input side: im2col of x ---------------------------------------------------------------
def _forward_input_side(layer, x, y):
    """y = [Wt | b] @ [col; 1], a chunk of samples at a time, each product written straight
    into its columns of y's (O, N*OH*OW) rows. Returns (g, workers): each worker's last col
    chunk stays in its workspace."""
    n, c = x.shape[:2]
    k, s, p = layer.k, layer.stride, layer.pad
    l, kk = y.shape[2] * y.shape[3], c * k * k
    wt = _tap_major_weight(layer, x.dtype)
    rows, workers = wt.shape[1], parallel.workers()
    g = layer._chunk(n, rows, l, x.dtype.itemsize, workers)
    yr = layout.rows(y)

    def work(start, stop, worker):
        buf = _ws(layer, "col", worker, (rows * g * l,), x.dtype)
        phases = _phases(layer, worker, g, x)
        for n0 in range(start, stop, g):
            m = min(g, stop - n0)
            col = buf[:rows * m * l].reshape(rows, m * l)
            im2col(x[n0:n0 + m].transpose(1, 0, 2, 3), k, s, p, col[:kk], phases)
            col[kk:] = 1                                   # the bias row, if any
            np.matmul(wt, col, out=yr[:, n0 * l:(n0 + m) * l])

    parallel.split_work(np, n, work)
    return g, workers


def _backward_input_side(layer, x, dy, dx, cols):
    """Per chunk: [dWt | db] += dY @ [col; 1]^T and dx = col2im(Wt^T @ dY), dY a column
    range of dy's rows, col2im writing straight into dx's samples. ``cols``: the (g, workers)
    of the chunks forward left in the workspaces, reused when they match."""
    n, c, h, w = x.shape
    k, s, p, o = layer.k, layer.stride, layer.pad, layer.out_ch
    l, kk = dy.shape[2] * dy.shape[3], c * k * k
    wt = _tap_major_weight(layer, x.dtype)
    rows, workers = wt.shape[1], parallel.workers()
    g = layer._chunk(n, rows, l, x.dtype.itemsize, workers)
    reuse = cols is not None and cols == (g, workers)
    dyr = layout.rows(dy)
    dxcm = dx.transpose(1, 0, 2, 3) if dx is not None else None

    def work(start, stop, worker):
        buf = _ws(layer, "col", worker, (rows * g * l,), x.dtype)
        dwt = _ws(layer, "dWt", worker, (o, rows), x.dtype)
        part = _ws(layer, "dWpart", worker, (o, rows), x.dtype)
        phases = _phases(layer, worker, g, x)
        starts = range(start, stop, g)
        last = starts[-1]
        for n0 in reversed(starts):
            m = min(g, stop - n0)
            dym = dyr[:, n0 * l:(n0 + m) * l]
            col = buf[:rows * m * l].reshape(rows, m * l)
            if not (n0 == last and reuse):
                im2col(x[n0:n0 + m].transpose(1, 0, 2, 3), k, s, p, col[:kk], phases)
                col[kk:] = 1
            np.matmul(dym, col.T, out=dwt if n0 == last else part)    # [dWt | db]
            if n0 != last:
                dwt += part
            if dxcm is not None:
                np.matmul(wt[:, :kk].T, dym, out=col[:kk])            # col now holds dcol
                col2im(col[:kk], k, s, p, dxcm[:, n0:n0 + m], phases)
        return dwt

    dwt = _sum_parts(parallel.split_work(np, n, work))
    layer.grads["W"][...] = dwt[:, :kk].reshape(o, k, k, c).transpose(0, 3, 1, 2)
    if "b" in layer.grads:
        layer.grads["b"][...] = dwt[:, kk]


# -- output side: the transposed convolution of the flipped kernel -------------------------
def _forward_output_side(layer, x, y):
    """Z = Wf @ X and y = col2im(Z, k, 1, k-1-p) + b, a chunk of samples at a time (X: a
    column range of x's rows; col2im writes straight into y's samples)."""
    n, c, h, w = x.shape
    k, kd, l = layer.k, layer.k * layer.k * layer.out_ch, h * w
    wf = _flipped_stack(layer, x.dtype)
    g = layer._chunk(n, kd, l, x.dtype.itemsize, parallel.workers())
    b = layer.params["b"][:, None, None, None] if "b" in layer.params else None
    xr, ycm = layout.rows(x), y.transpose(1, 0, 2, 3)

    def work(start, stop, worker):
        zbuf = _ws(layer, "Z", worker, (kd * g * l,), x.dtype)
        for n0 in range(start, stop, g):
            m = min(g, stop - n0)
            z = zbuf[:kd * m * l].reshape(kd, m * l)
            np.matmul(wf, xr[:, n0 * l:(n0 + m) * l], out=z)
            ym = col2im(z, k, 1, k - 1 - layer.pad, ycm[:, n0:n0 + m])
            if b is not None:
                ym += b

    parallel.split_work(np, n, work)


def _backward_output_side(layer, x, dy, dx):
    """D = im2col(dy, k, 1, k-1-p), dX = Wf^T @ D, dWf = D @ X^T (summed over chunks); X and
    dX are column ranges of x's and dx's rows."""
    n, c, h, w = x.shape
    k, o, l = layer.k, layer.out_ch, h * w
    kd = k * k * o
    wf = _flipped_stack(layer, x.dtype)
    g = layer._chunk(n, kd, l, x.dtype.itemsize, parallel.workers())
    bias = "b" in layer.grads
    xr, dyr = layout.rows(x), layout.rows(dy)
    dxr = layout.rows(dx) if dx is not None else None
    dycm, dyl = dy.transpose(1, 0, 2, 3), dy.shape[2] * dy.shape[3]

    def work(start, stop, worker):
        dbuf = _ws(layer, "Z", worker, (kd * g * l,), x.dtype)
        dwf = _ws(layer, "dWf", worker, (kd, c), x.dtype)
        part = _ws(layer, "dWpart", worker, (kd, c), x.dtype)
        db = _ws(layer, "db", worker, (o,), x.dtype) if bias else None
        if bias:
            dyr[:, start * dyl:stop * dyl].sum(axis=1, out=db)
        starts = range(start, stop, g)
        for n0 in reversed(starts):
            m = min(g, stop - n0)
            cols = slice(n0 * l, (n0 + m) * l)
            d = im2col(dycm[:, n0:n0 + m], k, 1, k - 1 - layer.pad,
                       dbuf[:kd * m * l].reshape(kd, m * l))
            np.matmul(d, xr[:, cols].T, out=dwf if n0 == starts[-1] else part)
            if n0 != starts[-1]:
                dwf += part
            if dxr is not None:
                np.matmul(wf.T, d, out=dxr[:, cols])
        return dwf, db

    parts = parallel.split_work(np, n, work)
    dwf = _sum_parts([dwf for dwf, _ in parts])
    layer.grads["W"][...] = dwf.reshape(k, k, o, c)[::-1, ::-1].transpose(2, 3, 0, 1)
    if bias:
        layer.grads["b"][...] = _sum_parts([db for _, db in parts])


# -- pointwise: 1x1, no im2col -------------------------------------------------------------
def _forward_pointwise(layer, x, y):
    """1x1: Y = W2d @ X (+ b) on the (channels, N*H*W) rows, a column range per worker."""
    n, c, h, w = x.shape
    w2d, l = layer.params["W"].reshape(layer.out_ch, c), h * w
    xr, yr = layout.rows(x), layout.rows(y)
    b = layer.params["b"][:, None] if "b" in layer.params else None

    def work(start, stop, worker):
        cols = slice(start * l, stop * l)
        np.matmul(w2d, xr[:, cols], out=yr[:, cols])
        if b is not None:
            yr[:, cols] += b

    parallel.split_work(np, n, work)


def _backward_pointwise(layer, x, dy, dx):
    """1x1: dX = W2d^T @ dY and dW2d = dY @ X^T on the (channels, N*H*W) rows, a column
    range per worker. Worker 0 writes its dW2d and db straight into the gradients, the
    others into partials added after it."""
    n, c, h, w = x.shape
    o, l = layer.out_ch, h * w
    w2d = layer.params["W"].reshape(o, c)
    bias = "b" in layer.grads
    xr, dyr = layout.rows(x), layout.rows(dy)
    dxr = layout.rows(dx) if dx is not None else None

    def work(start, stop, worker):
        if worker == 0:
            dw = layer.grads["W"].reshape(o, c)
            db = layer.grads["b"] if bias else None
        else:
            dw = _ws(layer, "dW", worker, (o, c), x.dtype)
            db = _ws(layer, "db", worker, (o,), x.dtype) if bias else None
        cols = slice(start * l, stop * l)
        if dxr is not None:
            np.matmul(w2d.T, dyr[:, cols], out=dxr[:, cols])
        np.matmul(dyr[:, cols], xr[:, cols].T, out=dw)
        if bias:
            dyr[:, cols].sum(axis=1, out=db)
        return dw, db

    parts = parallel.split_work(np, n, work)
    _sum_parts([dw for dw, _ in parts])
    if bias:
        _sum_parts([db for _, db in parts])


# -- im2col and col2im ---------------------------------------------------------------------
def _phase_view(phases, stride, c, g, h, w):
    """``phases`` (at least C*G*H*W elements) as the (s*s, C, G, H/s * W/s) phase planes."""
    return phases[:c * g * h * w].reshape(stride * stride, c, g, (h // stride) * (w // stride))


def _zero_outside(view, h0, h1, w0, w1):
    """Zero the entries of ``view`` (..., OH, OW) outside rows [h0, h1) x columns [w0, w1).
    Columns go one at a time: one column is a strided sweep per plane, much cheaper than a
    (..., OH, w0) slice whose inner loop would be w0 elements long."""
    view[..., :h0, :] = 0
    view[..., h1:, :] = 0
    for q in list(range(w0)) + list(range(w1, view.shape[-1])):
        view[..., h0:h1, q] = 0


def _channel_rows(a):
    """``a`` (C, G, H, W) as a (C, G*H*W) view when each channel's G*H*W elements are one dense
    run (C order, or a sample range of a channel-major array), else None."""
    c, g, h, w = a.shape
    item = a.itemsize
    dense = a.strides[3] == item and (h == 1 or a.strides[2] == w * item) and \
        (g == 1 or a.strides[1] == h * w * item)
    return a.reshape(c, g * h * w) if dense else None


def _check_col(col, rows, cols):
    if col.shape != (rows, cols) or not col.flags.c_contiguous:
        raise ValueError(f"col must be a C-contiguous ({rows}, {cols}) array, got shape "
                         f"{col.shape}, contiguous={col.flags.c_contiguous}")


def im2col(x, k, stride, pad, col, phases=None):
    """Fill ``col`` (k*k*C, G*OH*OW), laid out (k, k, C, G, OH, OW), from ``x`` (C, G, H, W)
    (channel-major; any strides). Entries that read padding are zeros. Returns ``col``.
    With ``phases`` (scratch of C*G*H*W elements) a strided convolution that ``conv_phase_taps``
    covers goes through the polyphase planes."""
    c, g, h, w = x.shape
    oh, ow, flat, taps = conv_taps(k, stride, pad, h, w)
    _check_col(col, k * k * c, g * oh * ow)
    col5 = col.reshape(k * k, c, g, oh, ow)
    phase_taps = conv_phase_taps(k, stride, pad, h, w) if phases is not None else None
    if phase_taps is not None:
        s, planes = stride, _phase_view(phases, stride, c, g, h, w)
        for f in range(s * s):
            planes[f].reshape(c, g, oh, ow)[...] = x[:, :, f // s::s, f % s::s]
        col4 = col.reshape(k * k, c, g, oh * ow)
        for t, f, h0, h1, w0, w1, off, a, b in phase_taps:
            col4[t, :, :, a:b] = planes[f, :, :, a + off:b + off]
            _zero_outside(col5[t], h0, h1, w0, w1)
        return col
    if flat:
        xf, col4 = x.reshape(c, g, h * w), col.reshape(k * k, c, g, oh * ow)
        for t, h0, h1, w0, w1, rows, cols, off, a, b in taps:
            col4[t, :, :, a:b] = xf[:, :, a + off:b + off]
            _zero_outside(col5[t], h0, h1, w0, w1)     # entries outside [a, b) or wrapped
        return col
    for t, h0, h1, w0, w1, rows, cols, off, a, b in taps:
        if rows is not None and cols is not None:
            col5[t, :, :, h0:h1, w0:w1] = x[:, :, rows, cols]
        _zero_outside(col5[t], h0, h1, w0, w1)
    return col


def col2im(col, k, stride, pad, dx, phases=None):
    """Adjoint of :func:`im2col`: overwrite ``dx`` (C, G, H, W) with the sum, over every entry
    of ``col`` (k*k*C, G*OH*OW), of that entry at the pixel it was read from (entries that read
    padding are dropped). ``col`` is scratch: its padding entries are zeroed. Fastest when each
    channel of ``dx`` is one dense run (then each tap is one shifted add of rows), or, for a
    strided convolution that ``conv_phase_taps`` covers, with ``phases`` (scratch of C*G*H*W
    elements; ``dx`` may then have any strides). Returns ``dx``."""
    c, g, h, w = dx.shape
    oh, ow, flat, taps = conv_taps(k, stride, pad, h, w)
    _check_col(col, k * k * c, g * oh * ow)
    col5 = col.reshape(k * k, c, g, oh, ow)
    phase_taps = conv_phase_taps(k, stride, pad, h, w) if phases is not None else None
    if phase_taps is not None:
        s, planes = stride, _phase_view(phases, stride, c, g, h, w)
        planes[...] = 0
        flat_planes, col2 = planes.reshape(s * s, -1), col.reshape(k * k, -1)
        size = flat_planes.shape[1]
        for t, f, h0, h1, w0, w1, off, a, b in phase_taps:
            _zero_outside(col5[t], h0, h1, w0, w1)          # what lands elsewhere adds 0
            lo, hi = max(0, -off), size - max(0, off)
            dst = flat_planes[f, lo + off:hi + off]
            dst += col2[t, lo:hi]
        for f in range(s * s):
            dx[:, :, f // s::s, f % s::s] = planes[f].reshape(c, g, oh, ow)
        return dx
    dx2 = _channel_rows(dx) if flat else None
    if dx2 is not None:
        col3 = col.reshape(k * k, c, -1)
        size = dx2.shape[1]
        center = (k // 2) * k + k // 2                   # off == 0 and every entry valid
        dx2[...] = col3[center]
        for t, h0, h1, w0, w1, rows, cols, off, a, b in taps:
            if t != center:
                _zero_outside(col5[t], h0, h1, w0, w1)  # what lands elsewhere adds 0
                lo, hi = max(0, -off), size - max(0, off)
                if hi > lo:                              # else every entry lands outside
                    dst = dx2[:, lo + off:hi + off]
                    dst += col3[t, :, lo:hi]
        return dx
    dx[...] = 0
    for t, h0, h1, w0, w1, rows, cols, off, a, b in taps:
        if rows is not None and cols is not None:
            dst = dx[:, :, rows, cols]
            dst += col5[t, :, :, h0:h1, w0:w1]
    return dx
