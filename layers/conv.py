"""2-D convolution (cross-correlation, as in Caffe): im2col + one GEMM per chunk of samples.

    y[n, o, oh, ow] = b[o] + sum_{c,i,j} W[o, c, i, j] * xpad[n, c, oh*s + i, ow*s + j]

Input-side route: im2col lays the input windows out tap-major,
col[(i*k + j)*C + c, (n, oh, ow)] = xpad[n, c, oh*s + i, ow*s + j], so with
Wt = W.transpose(0, 2, 3, 1).reshape(O, k*k*C) the forward is y = Wt @ col and the backward
is dWt = dy @ col^T, db = sum of dy over (n, oh, ow), dx = col2im(Wt^T @ dy), col2im being the
adjoint of im2col (it adds every col entry back to the pixel it was read from). The bias rides
along in the GEMMs: Wt gets b as an extra column and col an extra row of ones, so y includes b
and dy @ col^T yields [dWt | db].

Tap-major rows make each tap's block of col one contiguous (C, n, OH, OW) array: for stride 1
and OW == W an output pixel and the input pixel a tap reads are a fixed flat offset apart, so
col2im is k*k shifted 1-D adds (numpy adds on contiguous memory run ~5x faster than on strided
2-D slices).

A strided convolution whose output is the input divided by the stride (k3 s2 p1, GoogLeNet's
k7 s2 p3 on even sizes) gets the same flat treatment through polyphase planes: the input is
split once into its s*s sub-lattices (phase (a, b) holds pixels (s*r + a, s*q + b)), each the
size of the output, and every tap reads one phase at a fixed flat offset (``_phase_taps``);
col2im adds into phase planes and interleaves them into dx at the end. Two strided copies per
chunk replace k*k strided gathers and scatter-adds.

The batch is processed in chunks of g samples whose col (k*k*C, g*OH*OW) takes at most
``chunk_bytes``: col stays in cache between im2col and the GEMM, and one small workspace per
worker suffices. Backward recomputes col chunk by chunk (writing a large col to memory once and
reading it back costs more than rebuilding it in cache), except for each worker's last chunk,
which forward left in that worker's workspace.

On the CPU y and dx are channel-major (``layers/layout.py``): their (O, N*OH*OW) and
(C, N*H*W) rows are the GEMMs' own matrices, so a chunk's product is written straight into its
columns, and dy (and x on the routes that multiply it) are read the same way (an input in
another layout is copied once). Every route splits the samples over ``parallel.workers()``
threads (layers/parallel.py): each worker takes a contiguous range, chunks it with its own
workspaces and writes its samples of y or dx; in backward it sums its own [dW | db] partial,
and the partials are added in worker order (deterministic). g is capped at one worker's share
of the batch, so every worker gets samples.

Output-side route (stride 1, pad < k, O not much above C; see Conv2D). A stride-1 convolution
is also the transposed convolution (pad k-1-p) of the flipped kernel. With the stack
Wf (k*k*O, C), Wf[(i*k + j)*O + o, c] = W[o, c, k-1-i, k-1-j], and X = x as (C, positions):

    forward   Z = Wf @ X,  y = col2im(Z, k, 1, k-1-p) + b
    backward  D = im2col(dy, k, 1, k-1-p),  dX = Wf^T @ D,  dWf = D @ X^T,  db = sum of dy

(y[o, oh, ow] = sum_{i,j} Z[tap (k-1-i, k-1-j), o] at input pixel (oh+i-p, ow+j-p): k*k
shifted adds of O rows, the adjoint of building D). No im2col of x: the copies are k*k O-sized
ones (Z, D), against k*k C-sized ones (col, and col2im in backward) on the input-side route,
for the same GEMM flops when OH*OW == H*W (the GEMMs run over the H*W input positions); both
backward GEMMs share D. With "same" padding (OW == W) im2col and col2im take their flat path,
every tap one shifted copy or add of whole channel rows.

A 1x1, stride-1, unpadded convolution needs no im2col: Y = W2d @ X on the channel-major rows,
one GEMM per worker's range of samples (on the GPU, y[n] = W2d @ x[n] in one batched matmul).
"""
from functools import lru_cache

import numpy as np

from layers import backend, cuda, initializers, layout, parallel
from layers.backend import array_module
from layers.base import Layer


def conv_out_size(size, k, stride, pad):
    """Output length of a window sweep: floor((size + 2 pad - k) / stride) + 1."""
    return (size + 2 * pad - k) // stride + 1


def _valid_range(i, stride, pad, size, out):
    """Outputs o with 0 <= o*stride + i - pad < size (tap i reads real input), as [lo, hi)."""
    lo = min(out, max(0, -((i - pad) // stride)))
    hi = max(lo, min(out, (size - 1 + pad - i) // stride + 1))
    return lo, hi


@lru_cache(maxsize=256)
def _taps(k, stride, pad, h, w):
    """Geometry of every tap t = i*k + j: the valid output rows [h0, h1) and columns [w0, w1),
    the input rows/columns they read (slices, None when empty), the flat offset between an
    output pixel and the input pixel it reads when ``flat`` (stride 1 and OW == W), and the
    valid flat output range [a, b) of one plane in that case."""
    oh, ow = conv_out_size(h, k, stride, pad), conv_out_size(w, k, stride, pad)
    flat = stride == 1 and ow == w
    taps = []
    for i in range(k):
        h0, h1 = _valid_range(i, stride, pad, h, oh)
        for j in range(k):
            w0, w1 = _valid_range(j, stride, pad, w, ow)
            hs, ws = h0 * stride + i - pad, w0 * stride + j - pad
            rows = slice(hs, hs + (h1 - h0 - 1) * stride + 1, stride) if h1 > h0 else None
            cols = slice(ws, ws + (w1 - w0 - 1) * stride + 1, stride) if w1 > w0 else None
            off = (i - pad) * w + (j - pad)
            a, b = max(h0 * ow, -off), min(h1 * ow, h * w - off)
            taps.append((i * k + j, h0, h1, w0, w1, rows, cols, off, a, max(a, b)))
    return oh, ow, flat, tuple(taps)


@lru_cache(maxsize=256)
def _phase_taps(k, stride, pad, h, w):
    """Polyphase geometry of a strided convolution whose output is the input divided by the
    stride (H, W multiples of s, OH = H/s, OW = W/s: k3 s2 p1, k7 s2 p3, ...), else None.

    Phase f = a*s + b holds the input pixels (s*r + a, s*q + b) at (r, q), an (OH, OW) plane.
    Tap (i, j) of output (oh, ow) reads phase ((i-p) mod s, (j-p) mod s) at (oh + di, ow + dj),
    di = floor((i-p)/s), dj = floor((j-p)/s): a fixed flat offset di*OW + dj, as for a stride-1
    "same" convolution, so im2col and col2im become contiguous shifted 1-D copies and adds.
    Per tap, like ``_taps``: (t, phase, h0, h1, w0, w1, offset, a, b)."""
    if stride == 1 or h % stride or w % stride:
        return None
    oh, ow = conv_out_size(h, k, stride, pad), conv_out_size(w, k, stride, pad)
    if (oh, ow) != (h // stride, w // stride):
        return None
    taps = []
    for i in range(k):
        di = (i - pad) // stride
        h0, h1 = max(0, -di), max(0, min(oh, oh - di))
        for j in range(k):
            dj = (j - pad) // stride
            w0, w1 = max(0, -dj), max(0, min(ow, ow - dj))
            off = di * ow + dj
            a, b = max(h0 * ow, -off), min(h1 * ow, oh * ow - off)
            phase = ((i - pad) % stride) * stride + (j - pad) % stride
            taps.append((i * k + j, phase, h0, max(h0, h1), w0, max(w0, w1), off, a, max(a, b)))
    return tuple(taps)


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
    With ``phases`` (scratch of C*G*H*W elements) a strided convolution that ``_phase_taps``
    covers goes through the polyphase planes."""
    c, g, h, w = x.shape
    oh, ow, flat, taps = _taps(k, stride, pad, h, w)
    _check_col(col, k * k * c, g * oh * ow)
    col5 = col.reshape(k * k, c, g, oh, ow)
    phase_taps = _phase_taps(k, stride, pad, h, w) if phases is not None else None
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
    strided convolution that ``_phase_taps`` covers, with ``phases`` (scratch of C*G*H*W
    elements; ``dx`` may then have any strides). Returns ``dx``."""
    c, g, h, w = dx.shape
    oh, ow, flat, taps = _taps(k, stride, pad, h, w)
    _check_col(col, k * k * c, g * oh * ow)
    col5 = col.reshape(k * k, c, g, oh, ow)
    phase_taps = _phase_taps(k, stride, pad, h, w) if phases is not None else None
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


class Conv2D(Layer):
    """Convolution with square ``ksize`` kernels, weight (O, C, k, k), bias (O,).

    ``init`` is the weight initializer (engine.initializers.get: 'he', 'xavier',
    ('gaussian', std), or a callable); the bias starts at 0.

    Class attributes (may be set per instance): ``chunk_bytes`` bounds one chunk's col (a chunk
    holds at least one sample); with several workers ``worker_chunk_bytes`` bounds each worker's
    too (measured on 2 cores with 2 MiB of L2 each, inception_small's layers: 4 MiB per worker
    beats 2 MiB, whose chunks of one 28x28 sample read and write only 784-float runs of each
    channel row, and 0.5-1 MiB; see bench/README.md); a stride-1 layer with
    pad < k takes the output-side route (see the module docstring) in forward when
    O*H*W <= ``output_side_forward`` * C*OH*OW, in backward when
    O*H*W <= ``output_side_backward`` * C*OH*OW (its GEMMs run over the H*W input positions,
    the input-side ones over OH*OW). Measured on 2 cores, float32: the forward breaks
    even at O = C, the backward (which saves col2im over k*k*C rows) near O = 2C.
    """

    chunk_bytes = 8 << 20
    worker_chunk_bytes = 4 << 20
    output_side_forward = 1.0
    output_side_backward = 1.5

    def __init__(self, in_ch, out_ch, ksize, stride=1, pad=0, bias=True, init="he"):
        super().__init__()
        if not isinstance(ksize, int) or ksize < 1 or stride < 1 or pad < 0:
            raise ValueError(f"Conv2D: need an int ksize >= 1, stride >= 1, pad >= 0; "
                             f"got ksize={ksize!r}, stride={stride}, pad={pad}")
        self.in_ch, self.out_ch, self.k, self.stride, self.pad = in_ch, out_ch, ksize, stride, pad
        self.pointwise = ksize == 1 and stride == 1 and pad == 0
        self.param_shapes["W"] = (out_ch, in_ch, ksize, ksize)
        self.initializers["W"] = initializers.get(init)
        if bias:
            self.param_shapes["b"] = (out_ch,)
            self.initializers["b"] = initializers.Constant(0.0)
        self.x = None
        self._col_of = None   # (x, g, workers): forward left each worker's last col chunk

    def _output_side(self, ratio, x_shape):
        """Whether the output-side route is used: stride 1, pad < k, O*H*W <= ratio * C*OH*OW."""
        _, c, h, w = x_shape
        k, p = self.k, self.pad
        return not self.pointwise and self.stride == 1 and p < k and self.out_ch * h * w <= \
            ratio * c * conv_out_size(h, k, 1, p) * conv_out_size(w, k, 1, p)

    @staticmethod
    def _workers(xp):
        """Worker threads to split samples over: parallel.workers() on the CPU, else 1."""
        return parallel.workers() if xp is np else 1

    def _chunk(self, n, rows, l, itemsize, workers=1):
        """Samples per chunk: as many as keep a (rows, g*l) buffer within ``chunk_bytes``, or
        with several workers within ``worker_chunk_bytes`` too (at least one), and at most one
        worker's share of the n samples."""
        share = -(-n // max(1, min(workers, n)))
        limit = self.chunk_bytes if workers == 1 else min(self.chunk_bytes, self.worker_chunk_bytes)
        return max(1, min(share, limit // max(1, rows * l * itemsize)))

    def _ws(self, name, worker, shape, dtype, xp):
        """Worker ``worker``'s own workspace ``name``."""
        return self.workspace((name, worker), shape, dtype, xp)

    @staticmethod
    def _sum_parts(parts):
        """Add the workers' partial sums into the first, in worker order; returns it."""
        total = parts[0]
        for part in parts[1:]:
            total += part
        return total

    def _tap_major_weight(self, xp, dtype):
        """[Wt | b]: W.transpose(0, 2, 3, 1) as (O, k*k*C), then the bias as a last column
        (col gets a matching row of ones, so the GEMMs also add b and produce db)."""
        o, c, k, _ = self.params["W"].shape
        kk = k * k * c
        wt = self.workspace("Wt", (o, kk + ("b" in self.params)), dtype, xp)
        wt[:, :kk].reshape(o, k, k, c)[...] = self.params["W"].transpose(0, 2, 3, 1)
        if "b" in self.params:
            wt[:, kk] = self.params["b"]
        return wt

    def _flipped_stack(self, xp, dtype):
        """Wf (k*k*O, C): Wf[(i*k + j)*O + o, c] = W[o, c, k-1-i, k-1-j]."""
        o, c, k, _ = self.params["W"].shape
        wf = self.workspace("Wf", (k * k * o, c), dtype, xp)
        wf.reshape(k, k, o, c)[...] = self.params["W"].transpose(2, 3, 0, 1)[::-1, ::-1]
        return wf

    def forward(self, x, train=True):
        self.check_input(x, 4, self.in_ch)
        xp = array_module(x)
        n, c, h, w = x.shape
        k, s, p, o = self.k, self.stride, self.pad, self.out_ch
        oh, ow = conv_out_size(h, k, s, p), conv_out_size(w, k, s, p)
        if oh < 1 or ow < 1:
            raise ValueError(f"{self.name}: input {x.shape} is smaller than the {k}x{k} kernel "
                             f"with pad {p}")
        self.forward_flops = 2 * n * o * c * k * k * oh * ow
        self._col_of = None
        if backend.uses_kernels(xp):
            y = xp.empty((n, o, oh, ow), dtype=x.dtype)
            if self.pointwise:
                self._forward_pointwise_gpu(x, y, xp)
            else:
                self._forward_kernels(x, y, xp)
            self.x = x if train else None
            return y
        y = layout.empty((n, o, oh, ow), x.dtype)
        if self.pointwise or self._output_side(max(self.output_side_forward,
                                                   self.output_side_backward), x.shape):
            x = layout.to_channel_major(x)       # these routes read x as (C, N*H*W) rows
        self.x = x if train else None
        if self.pointwise:
            self._forward_pointwise(x, y)
        elif self._output_side(self.output_side_forward, x.shape):
            self._forward_output_side(x, y)
        else:
            self._forward_input_side(x, y)
        return y

    def _forward_input_side(self, x, y):
        """y = [Wt | b] @ [col; 1], a chunk of samples at a time, each product written straight
        into its columns of y's (O, N*OH*OW) rows."""
        n, c = x.shape[:2]
        k, s, p = self.k, self.stride, self.pad
        l, kk = y.shape[2] * y.shape[3], c * k * k
        wt = self._tap_major_weight(np, x.dtype)
        rows, workers = wt.shape[1], self._workers(np)
        g = self._chunk(n, rows, l, x.dtype.itemsize, workers)
        yr = layout.rows(y)

        def work(start, stop, worker):
            buf = self._ws("col", worker, (rows * g * l,), x.dtype, np)
            phases = self._phases(worker, g, x, np)
            for n0 in range(start, stop, g):
                m = min(g, stop - n0)
                col = buf[:rows * m * l].reshape(rows, m * l)
                im2col(x[n0:n0 + m].transpose(1, 0, 2, 3), k, s, p, col[:kk], phases)
                col[kk:] = 1                                   # the bias row, if any
                np.matmul(wt, col, out=yr[:, n0 * l:(n0 + m) * l])

        parallel.split_work(np, n, work)
        self._col_of = (x, g, workers)

    def _forward_kernels(self, x, y, xp):
        """GPU: col = im2col(x) for the whole batch (``conv.cu``; rows (c, i, j), columns
        (n, oh, ow)), Y = W @ col as (O, N*OH*OW), then y = Y as NCHW (+ b). col stays for
        backward."""
        n, c, h, w = x.shape
        o, oh, ow = y.shape[1:]
        k, kk, positions = self.k, c * self.k * self.k, n * oh * ow
        col = self.workspace("col_kernel", (kk, positions), x.dtype, xp)
        cuda.launch("conv", "im2col", x.dtype, col.size,
                    (xp.ascontiguousarray(x), col, n, c, h, w, k, self.stride, self.pad, oh, ow))
        yt = self.workspace("yt_kernel", (o, positions), x.dtype, xp)
        xp.matmul(self.params["W"].reshape(o, kk), col, out=yt)
        y[...] = yt.reshape(o, n, oh, ow).transpose(1, 0, 2, 3)
        if "b" in self.params:
            cuda.launch("elementwise", "bias_add", x.dtype, y.size,
                        (y, self.params["b"], n, o, oh * ow))
        self._col_of = (x, col)

    def _backward_kernels(self, x, dy, xp):
        """GPU: dW = dY @ col^T, db = sum of dy, dcol = W^T @ dY (into col's memory), and dx =
        col2im(dcol), a gather per input pixel (``conv.cu``)."""
        n, c, h, w = x.shape
        o, oh, ow = dy.shape[1:]
        k, kk, positions = self.k, c * self.k * self.k, n * oh * ow
        col_of, self._col_of = self._col_of, None
        if col_of is None or col_of[0] is not x:
            raise RuntimeError(f"{self.name}: backward needs the columns of its last training "
                               f"forward")
        col = col_of[1]
        dyt = self.workspace("yt_kernel", (o, positions), dy.dtype, xp)
        dyt.reshape(o, n, oh, ow)[...] = dy.transpose(1, 0, 2, 3)
        xp.matmul(dyt, col.T, out=self.grads["W"].reshape(o, kk))
        if "b" in self.grads:
            self.grads["b"][...] = dyt.sum(axis=1)
        xp.matmul(self.params["W"].reshape(o, kk).T, dyt, out=col)
        dx = xp.empty(x.shape, x.dtype)
        cuda.launch("conv", "col2im", x.dtype, dx.size,
                    (col, dx, n, c, h, w, k, self.stride, self.pad, oh, ow))
        return dx

    def _backward_pointwise_gpu(self, x, dy3, xp):
        """GPU 1x1: dx = W2d^T @ dy per sample (one batched GEMM), and dW2d = dY @ X^T as one
        GEMM over the whole batch, dY and X laid out (channels, N*H*W) first."""
        n, c, h, w = x.shape
        o, l = self.out_ch, h * w
        w2d = self.params["W"].reshape(o, c)
        dx = xp.matmul(w2d.T, dy3).reshape(x.shape)
        dyt = self.workspace("yt_kernel", (o, n * l), x.dtype, xp)
        dyt.reshape(o, n, l)[...] = dy3.transpose(1, 0, 2)
        xt = self.workspace("xt_kernel", (c, n * l), x.dtype, xp)
        xt.reshape(c, n, l)[...] = x.reshape(n, c, l).transpose(1, 0, 2)
        xp.matmul(dyt, xt.T, out=self.grads["W"].reshape(o, c))
        if "b" in self.grads:
            self.grads["b"][...] = dyt.sum(axis=1)
        return dx

    def _phases(self, worker, g, x, xp):
        """Worker ``worker``'s polyphase scratch for g samples, when im2col/col2im can use it
        (a strided convolution with OH = H/s, OW = W/s; see ``_phase_taps``), else None."""
        _, c, h, w = x.shape
        if xp is not np or _phase_taps(self.k, self.stride, self.pad, h, w) is None:
            return None
        return self._ws("phases", worker, (c * g * h * w,), x.dtype, xp)

    def _forward_pointwise_gpu(self, x, y, xp):
        """GPU 1x1: y[n] = W2d @ x[n] (+ b), one batched matmul."""
        n, c = x.shape[:2]
        y3 = y.reshape(n, self.out_ch, -1)
        xp.matmul(self.params["W"].reshape(self.out_ch, c), x.reshape(n, c, -1), out=y3)
        if "b" in self.params:
            y3 += self.params["b"][:, None]

    def _forward_pointwise(self, x, y):
        """1x1: Y = W2d @ X (+ b) on the (channels, N*H*W) rows, a column range per worker."""
        n, c, h, w = x.shape
        w2d, l = self.params["W"].reshape(self.out_ch, c), h * w
        xr, yr = layout.rows(x), layout.rows(y)
        b = self.params["b"][:, None] if "b" in self.params else None

        def work(start, stop, worker):
            cols = slice(start * l, stop * l)
            np.matmul(w2d, xr[:, cols], out=yr[:, cols])
            if b is not None:
                yr[:, cols] += b

        parallel.split_work(np, n, work)

    def _forward_output_side(self, x, y):
        """Z = Wf @ X and y = col2im(Z, k, 1, k-1-p) + b, a chunk of samples at a time (X: a
        column range of x's rows; col2im writes straight into y's samples)."""
        n, c, h, w = x.shape
        k, kd, l = self.k, self.k * self.k * self.out_ch, h * w
        wf = self._flipped_stack(np, x.dtype)
        g = self._chunk(n, kd, l, x.dtype.itemsize, self._workers(np))
        b = self.params["b"][:, None, None, None] if "b" in self.params else None
        xr, ycm = layout.rows(x), y.transpose(1, 0, 2, 3)

        def work(start, stop, worker):
            zbuf = self._ws("Z", worker, (kd * g * l,), x.dtype, np)
            for n0 in range(start, stop, g):
                m = min(g, stop - n0)
                z = zbuf[:kd * m * l].reshape(kd, m * l)
                np.matmul(wf, xr[:, n0 * l:(n0 + m) * l], out=z)
                ym = col2im(z, k, 1, k - 1 - self.pad, ycm[:, n0:n0 + m])
                if b is not None:
                    ym += b

        parallel.split_work(np, n, work)

    def backward(self, dy):
        x = self.x
        if x is None:
            raise RuntimeError(f"{self.name}: backward needs a forward(x, train=True) first")
        xp = array_module(x)
        if backend.uses_kernels(xp):
            if self.pointwise:
                return self._backward_pointwise_gpu(x, dy.reshape(dy.shape[0], self.out_ch, -1),
                                                    xp)
            return self._backward_kernels(x, dy, xp)
        dy = layout.to_channel_major(dy)
        dx = layout.empty(x.shape, x.dtype)
        if self.pointwise:
            self._backward_pointwise(x, dy, dx)
        elif self._output_side(self.output_side_backward, x.shape):
            self._backward_output_side(x, dy, dx)
        else:
            self._backward_input_side(x, dy, dx)
        return dx

    def _backward_input_side(self, x, dy, dx):
        """Per chunk: [dWt | db] += dY @ [col; 1]^T and dx = col2im(Wt^T @ dY), dY a column
        range of dy's rows, col2im writing straight into dx's samples."""
        n, c, h, w = x.shape
        k, s, p, o = self.k, self.stride, self.pad, self.out_ch
        l, kk = dy.shape[2] * dy.shape[3], c * k * k
        wt = self._tap_major_weight(np, x.dtype)
        rows, workers = wt.shape[1], self._workers(np)
        g = self._chunk(n, rows, l, x.dtype.itemsize, workers)
        col_of, self._col_of = self._col_of, None
        reuse = col_of is not None and col_of[0] is x and col_of[1:] == (g, workers)
        dyr, dxcm = layout.rows(dy), dx.transpose(1, 0, 2, 3)

        def work(start, stop, worker):
            buf = self._ws("col", worker, (rows * g * l,), x.dtype, np)
            dwt = self._ws("dWt", worker, (o, rows), x.dtype, np)
            part = self._ws("dWpart", worker, (o, rows), x.dtype, np)
            phases = self._phases(worker, g, x, np)
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
                np.matmul(wt[:, :kk].T, dym, out=col[:kk])                # col now holds dcol
                col2im(col[:kk], k, s, p, dxcm[:, n0:n0 + m], phases)
            return dwt

        dwt = self._sum_parts(parallel.split_work(np, n, work))
        self.grads["W"][...] = dwt[:, :kk].reshape(o, k, k, c).transpose(0, 3, 1, 2)
        if "b" in self.grads:
            self.grads["b"][...] = dwt[:, kk]

    def _backward_output_side(self, x, dy, dx):
        """D = im2col(dy, k, 1, k-1-p), dX = Wf^T @ D, dWf = D @ X^T (summed over chunks); X and
        dX are column ranges of x's and dx's rows."""
        n, c, h, w = x.shape
        k, o, l = self.k, self.out_ch, h * w
        kd = k * k * o
        wf = self._flipped_stack(np, x.dtype)
        g = self._chunk(n, kd, l, x.dtype.itemsize, self._workers(np))
        bias = "b" in self.grads
        xr, dxr, dyr = layout.rows(x), layout.rows(dx), layout.rows(dy)
        dycm, dyl = dy.transpose(1, 0, 2, 3), dy.shape[2] * dy.shape[3]

        def work(start, stop, worker):
            dbuf = self._ws("Z", worker, (kd * g * l,), x.dtype, np)
            dwf = self._ws("dWf", worker, (kd, c), x.dtype, np)
            part = self._ws("dWpart", worker, (kd, c), x.dtype, np)
            db = self._ws("db", worker, (o,), x.dtype, np) if bias else None
            if bias:
                dyr[:, start * dyl:stop * dyl].sum(axis=1, out=db)
            starts = range(start, stop, g)
            for n0 in reversed(starts):
                m = min(g, stop - n0)
                cols = slice(n0 * l, (n0 + m) * l)
                d = im2col(dycm[:, n0:n0 + m], k, 1, k - 1 - self.pad,
                           dbuf[:kd * m * l].reshape(kd, m * l))
                np.matmul(d, xr[:, cols].T, out=dwf if n0 == starts[-1] else part)
                if n0 != starts[-1]:
                    dwf += part
                np.matmul(wf.T, d, out=dxr[:, cols])
            return dwf, db

        parts = parallel.split_work(np, n, work)
        dwf = self._sum_parts([dwf for dwf, _ in parts])
        self.grads["W"][...] = dwf.reshape(k, k, o, c)[::-1, ::-1].transpose(2, 3, 0, 1)
        if bias:
            self.grads["b"][...] = self._sum_parts([db for _, db in parts])

    def _backward_pointwise(self, x, dy, dx):
        """1x1: dX = W2d^T @ dY and dW2d = dY @ X^T on the (channels, N*H*W) rows, a column
        range per worker. Worker 0 writes its dW2d and db straight into the gradients, the
        others into partials added after it."""
        n, c, h, w = x.shape
        o, l = self.out_ch, h * w
        w2d = self.params["W"].reshape(o, c)
        bias = "b" in self.grads
        xr, dyr, dxr = layout.rows(x), layout.rows(dy), layout.rows(dx)

        def work(start, stop, worker):
            if worker == 0:
                dw = self.grads["W"].reshape(o, c)
                db = self.grads["b"] if bias else None
            else:
                dw = self._ws("dW", worker, (o, c), x.dtype, np)
                db = self._ws("db", worker, (o,), x.dtype, np) if bias else None
            cols = slice(start * l, stop * l)
            np.matmul(w2d.T, dyr[:, cols], out=dxr[:, cols])
            np.matmul(dyr[:, cols], xr[:, cols].T, out=dw)
            if bias:
                dyr[:, cols].sum(axis=1, out=db)
            return dw, db

        parts = parallel.split_work(np, n, work)
        self._sum_parts([dw for dw, _ in parts])
        if bias:
            self._sum_parts([db for _, db in parts])
