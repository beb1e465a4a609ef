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

On the CPU every route splits the samples over ``parallel.workers()`` threads (layers/parallel.py):
each worker takes a contiguous range, chunks it with its own workspaces and writes its samples of
y or dx; in backward it sums its own [dW | db] partial, and the partials are added in worker order
(deterministic). g is capped at one worker's share of the batch, so every worker gets samples.

Output-side route (stride 1, pad < k, O not much above C; see Conv2D). A stride-1 convolution
is also the transposed convolution (pad k-1-p) of the flipped kernel. With the stack
Wf (k*k*O, C), Wf[(i*k + j)*O + o, c] = W[o, c, k-1-i, k-1-j], and X = x as (C, positions):

    forward   Z = Wf @ X,  y = col2im(Z, k, 1, k-1-p) + b
    backward  D = im2col(dy, k, 1, k-1-p),  dX = Wf^T @ D,  dWf = D @ X^T,  db = sum of dy

(y[o, oh, ow] = sum_{i,j} Z[tap (k-1-i, k-1-j), o] at input pixel (oh+i-p, ow+j-p): k*k
shifted adds of O rows, the adjoint of building D). No im2col of x: the copies are k*k O-sized
ones (Z, D) and one of x, against k*k C-sized ones (col, and col2im in backward) on the
input-side route, for the same GEMM flops when OH*OW == H*W (the GEMMs run over the H*W input
positions); both backward GEMMs share D. With "same" padding (OW == W) im2col and col2im take
their flat path, every tap one shifted 1-D copy or add.

A 1x1, stride-1, unpadded convolution needs no im2col: x is viewed as (N, C, H*W) and
y[n] = W2d @ x[n] for every n of a worker's range in one batched matmul.
"""
from functools import lru_cache

import numpy as np

from engine import initializers
from layers import cuda, parallel
from layers.base import Layer, get_array_module


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
    padding are dropped). ``col`` is scratch: its padding entries are zeroed. Fastest when ``dx``
    is C-contiguous (then each tap is one shifted 1-D add), or, for a strided convolution that
    ``_phase_taps`` covers, with ``phases`` (scratch of C*G*H*W elements; ``dx`` may then have
    any strides). Returns ``dx``."""
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
    if flat and dx.flags.c_contiguous:
        dx1, col2 = dx.reshape(-1), col.reshape(k * k, -1)
        size = dx1.shape[0]
        center = (k // 2) * k + k // 2                   # off == 0 and every entry valid
        dx1[...] = col2[center]
        for t, h0, h1, w0, w1, rows, cols, off, a, b in taps:
            if t != center:
                _zero_outside(col5[t], h0, h1, w0, w1)  # what lands elsewhere adds 0
                lo, hi = max(0, -off), size - max(0, off)
                dst = dx1[lo + off:hi + off]
                dst += col2[t, lo:hi]
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
    too (measured on 2 cores with 4 MiB L2 each: 2 MiB per worker beats 8 MiB by 1.1-1.6x, while
    one GEMM on 2 BLAS threads splits an 8 MiB col between the cores); a stride-1 layer with
    pad < k takes the output-side route (see the module docstring) in forward when
    O*H*W <= ``output_side_forward`` * C*OH*OW, in backward when
    O*H*W <= ``output_side_backward`` * C*OH*OW (its GEMMs run over the H*W input positions,
    the input-side ones over OH*OW). Measured on 2 cores, float32: the forward breaks
    even at O = C, the backward (which saves col2im over k*k*C rows) near O = 2C.
    """

    chunk_bytes = 8 << 20
    worker_chunk_bytes = 2 << 20
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

    @staticmethod
    def _channel_major(x, n0, m, buf):
        """Samples n0:n0+m of x as (C, m*H*W): a view of x when m == 1, else copied into
        ``buf``."""
        _, c, h, w = x.shape
        if m == 1:
            return x[n0].reshape(c, h * w)
        xm = buf[:c * m * h * w].reshape(c, m, h, w)
        xm[...] = x[n0:n0 + m].transpose(1, 0, 2, 3)
        return xm.reshape(c, m * h * w)

    def forward(self, x, train=True):
        self.check_input(x, 4, self.in_ch)
        xp = get_array_module(x)
        n, c, h, w = x.shape
        k, s, p, o = self.k, self.stride, self.pad, self.out_ch
        oh, ow = conv_out_size(h, k, s, p), conv_out_size(w, k, s, p)
        if oh < 1 or ow < 1:
            raise ValueError(f"{self.name}: input {x.shape} is smaller than the {k}x{k} kernel "
                             f"with pad {p}")
        l, kk = oh * ow, c * k * k
        y = xp.empty((n, o, oh, ow), dtype=x.dtype)
        y3 = y.reshape(n, o, l)
        self.forward_flops = 2 * n * o * kk * l
        self.x = x if train else None
        self._col_of = None
        if self.pointwise:
            self._forward_pointwise(x, y3, xp)
            return y
        if cuda.wanted(xp):
            self._forward_kernels(x, y, xp)
            return y
        if self._output_side(self.output_side_forward, x.shape):
            self._forward_output_side(x, y, xp)
            return y
        wt = self._tap_major_weight(xp, x.dtype)
        rows, workers = wt.shape[1], self._workers(xp)
        g = self._chunk(n, rows, l, x.dtype.itemsize, workers)

        def work(start, stop, worker):
            buf = self._ws("col", worker, (rows * g * l,), x.dtype, xp)
            yt = self._ws("yt", worker, (o, g * l), x.dtype, xp) if g > 1 else None
            phases = self._phases(worker, g, x, xp)
            for n0 in range(start, stop, g):
                m = min(g, stop - n0)
                col = buf[:rows * m * l].reshape(rows, m * l)
                im2col(x[n0:n0 + m].transpose(1, 0, 2, 3), k, s, p, col[:kk], phases)
                col[kk:] = 1                                   # the bias row, if any
                if m == 1:
                    xp.matmul(wt, col, out=y3[n0])
                else:
                    xp.matmul(wt, col, out=yt[:, :m * l])
                    y3[n0:n0 + m] = yt[:, :m * l].reshape(o, m, l).transpose(1, 0, 2)

        parallel.split_work(xp, n, work)
        self._col_of = (x, g, workers)
        return y

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

    def _forward_pointwise(self, x, y3, xp):
        """1x1: y[n] = W2d @ x[n] (+ b), one batched matmul per worker's range of samples."""
        n, c = x.shape[:2]
        w2d, x3 = self.params["W"].reshape(self.out_ch, c), x.reshape(n, c, -1)
        b = self.params["b"][:, None] if "b" in self.params else None

        def work(start, stop, worker):
            ym = y3[start:stop]
            xp.matmul(w2d, x3[start:stop], out=ym)
            if b is not None:
                ym += b

        parallel.split_work(xp, n, work)

    def _forward_output_side(self, x, y, xp):
        """Z = Wf @ X and y = col2im(Z, k, 1, k-1-p) + b, a chunk of samples at a time."""
        n, c, h, w = x.shape
        o, oh, ow = y.shape[1:]
        k, kd = self.k, self.k * self.k * self.out_ch
        wf = self._flipped_stack(xp, x.dtype)
        g = self._chunk(n, kd, h * w, x.dtype.itemsize, self._workers(xp))
        b = self.params["b"][:, None, None] if "b" in self.params else None

        def work(start, stop, worker):
            zbuf = self._ws("Z", worker, (kd * g * h * w,), x.dtype, xp)
            xbuf = self._ws("X", worker, (c * g * h * w,), x.dtype, xp) if g > 1 else None
            yt = self._ws("yt", worker, (o * g * oh * ow,), x.dtype, xp)
            for n0 in range(start, stop, g):
                m = min(g, stop - n0)
                z = zbuf[:kd * m * h * w].reshape(kd, m * h * w)
                xp.matmul(wf, self._channel_major(x, n0, m, xbuf), out=z)
                ym = col2im(z, k, 1, k - 1 - self.pad,
                            yt[:o * m * oh * ow].reshape(o, m, oh, ow))
                if b is None:
                    y[n0:n0 + m] = ym.transpose(1, 0, 2, 3)
                else:
                    xp.add(ym.transpose(1, 0, 2, 3), b, out=y[n0:n0 + m])

        parallel.split_work(xp, n, work)

    def backward(self, dy):
        x = self.x
        if x is None:
            raise RuntimeError(f"{self.name}: backward needs a forward(x, train=True) first")
        xp = get_array_module(x)
        n, c, h, w = x.shape
        o, l = self.out_ch, dy.shape[2] * dy.shape[3]
        dy3 = dy.reshape(n, o, l)
        if self.pointwise and cuda.wanted(xp):
            return self._backward_pointwise_gpu(x, dy3, xp)
        if self.pointwise:
            return self._backward_pointwise(x, dy3, xp)
        if cuda.wanted(xp):
            return self._backward_kernels(x, dy, xp)
        if self._output_side(self.output_side_backward, x.shape):
            return self._backward_output_side(x, dy, xp)
        k, s, p, kk = self.k, self.stride, self.pad, c * self.k * self.k
        wt = self._tap_major_weight(xp, x.dtype)
        rows, workers = wt.shape[1], self._workers(xp)
        g = self._chunk(n, rows, l, x.dtype.itemsize, workers)
        col_of, self._col_of = self._col_of, None
        reuse = col_of is not None and col_of[0] is x and col_of[1:] == (g, workers)
        dx = xp.empty(x.shape, x.dtype)

        def work(start, stop, worker):
            buf = self._ws("col", worker, (rows * g * l,), x.dtype, xp)
            dwt = self._ws("dWt", worker, (o, rows), x.dtype, xp)
            part = self._ws("dWpart", worker, (o, rows), x.dtype, xp)
            dyt = self._ws("dyt", worker, (o, g * l), x.dtype, xp) if g > 1 else None
            phases = self._phases(worker, g, x, xp)
            dxt = self._ws("dxt", worker, (c * g * h * w,), x.dtype, xp) \
                if g > 1 and phases is None else None
            starts = range(start, stop, g)
            last = starts[-1]
            for n0 in reversed(starts):
                m = min(g, stop - n0)
                if m == 1:
                    dym = dy3[n0]
                else:
                    dym = dyt[:, :m * l]
                    dym.reshape(o, m, l)[...] = dy3[n0:n0 + m].transpose(1, 0, 2)
                col = buf[:rows * m * l].reshape(rows, m * l)
                if not (n0 == last and reuse):
                    im2col(x[n0:n0 + m].transpose(1, 0, 2, 3), k, s, p, col[:kk], phases)
                    col[kk:] = 1
                xp.matmul(dym, col.T, out=dwt if n0 == last else part)    # [dWt | db]
                if n0 != last:
                    dwt += part
                xp.matmul(wt[:, :kk].T, dym, out=col[:kk])                # col now holds dcol
                if m == 1 or phases is not None:       # written in place (any strides)
                    col2im(col[:kk], k, s, p, dx[n0:n0 + m].transpose(1, 0, 2, 3), phases)
                else:                                  # channel-major, then to dx
                    dxm = col2im(col[:kk], k, s, p, dxt[:c * m * h * w].reshape(c, m, h, w))
                    dx[n0:n0 + m] = dxm.transpose(1, 0, 2, 3)
            return dwt

        dwt = self._sum_parts(parallel.split_work(xp, n, work))
        self.grads["W"][...] = dwt[:, :kk].reshape(o, k, k, c).transpose(0, 3, 1, 2)
        if "b" in self.grads:
            self.grads["b"][...] = dwt[:, kk]
        return dx

    def _backward_output_side(self, x, dy, xp):
        """D = im2col(dy, k, 1, k-1-p), dX = Wf^T @ D, dWf = D @ X^T (summed over chunks)."""
        n, c, h, w = x.shape
        k, o = self.k, self.out_ch
        kd = k * k * o
        wf = self._flipped_stack(xp, x.dtype)
        g = self._chunk(n, kd, h * w, x.dtype.itemsize, self._workers(xp))
        dx = xp.empty(x.shape, x.dtype)
        bias = "b" in self.grads

        def work(start, stop, worker):
            dbuf = self._ws("Z", worker, (kd * g * h * w,), x.dtype, xp)
            xbuf = self._ws("X", worker, (c * g * h * w,), x.dtype, xp) if g > 1 else None
            dwf = self._ws("dWf", worker, (kd, c), x.dtype, xp)
            part = self._ws("dWpart", worker, (kd, c), x.dtype, xp)
            dxt = self._ws("dxt", worker, (c * g * h * w,), x.dtype, xp) if g > 1 else None
            db = self._ws("db", worker, (o,), x.dtype, xp) if bias else None
            if bias:
                dy[start:stop].sum(axis=(0, 2, 3), out=db)
            starts = range(start, stop, g)
            for n0 in reversed(starts):
                m = min(g, stop - n0)
                d = im2col(dy[n0:n0 + m].transpose(1, 0, 2, 3), k, 1, k - 1 - self.pad,
                           dbuf[:kd * m * h * w].reshape(kd, m * h * w))
                xp.matmul(d, self._channel_major(x, n0, m, xbuf).T,
                          out=dwf if n0 == starts[-1] else part)
                if n0 != starts[-1]:
                    dwf += part
                if m == 1:
                    xp.matmul(wf.T, d, out=dx[n0].reshape(c, h * w))
                else:
                    dxm = dxt[:c * m * h * w].reshape(c, m * h * w)
                    xp.matmul(wf.T, d, out=dxm)
                    dx[n0:n0 + m] = dxm.reshape(c, m, h, w).transpose(1, 0, 2, 3)
            return dwf, db

        parts = parallel.split_work(xp, n, work)
        dwf = self._sum_parts([dwf for dwf, _ in parts])
        self.grads["W"][...] = dwf.reshape(k, k, o, c)[::-1, ::-1].transpose(2, 3, 0, 1)
        if bias:
            self.grads["b"][...] = self._sum_parts([db for _, db in parts])
        return dx

    def _backward_pointwise(self, x, dy3, xp):
        """1x1: dx[n] = W2d^T @ dy[n]; dW2d = sum_n dy[n] @ x[n]^T, a chunk of samples per GEMM
        (their x and dy transposed to (C, g*HW) and (O, g*HW)). Worker 0 writes its dW2d and db
        straight into the gradients, the others into partials added after it."""
        n, c, h, w = x.shape
        o, l = self.out_ch, h * w
        w2d = self.params["W"].reshape(o, c)
        g = self._chunk(n, c, l, x.dtype.itemsize, self._workers(xp))
        bias = "b" in self.grads
        dx = xp.empty(x.shape, x.dtype)
        dx3 = dx.reshape(n, c, l)

        def work(start, stop, worker):
            if worker == 0:
                dw = self.grads["W"].reshape(o, c)
                db = self.grads["b"] if bias else None
            else:
                dw = self._ws("dW", worker, (o, c), x.dtype, xp)
                db = self._ws("db", worker, (o,), x.dtype, xp) if bias else None
            if bias:
                dy3[start:stop].sum(axis=(0, 2), out=db)
            xp.matmul(w2d.T, dy3[start:stop], out=dx3[start:stop])
            part = self._ws("dWpart", worker, (o, c), x.dtype, xp)
            xt = self._ws("xt", worker, (c, g * l), x.dtype, xp) if g > 1 else None
            dyt = self._ws("dyt", worker, (o, g * l), x.dtype, xp) if g > 1 else None
            for n0 in range(start, stop, g):
                m = min(g, stop - n0)
                if m == 1:
                    xm, dym = x[n0].reshape(c, l), dy3[n0]
                else:
                    xm, dym = xt[:, :m * l], dyt[:, :m * l]
                    xm.reshape(c, m, l)[...] = x[n0:n0 + m].reshape(m, c, l).transpose(1, 0, 2)
                    dym.reshape(o, m, l)[...] = dy3[n0:n0 + m].transpose(1, 0, 2)
                xp.matmul(dym, xm.T, out=dw if n0 == start else part)
                if n0 != start:
                    dw += part
            return dw, db

        parts = parallel.split_work(xp, n, work)
        self._sum_parts([dw for dw, _ in parts])
        if bias:
            self._sum_parts([db for _, db in parts])
        return dx
