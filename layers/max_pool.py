"""Max pooling with Caffe's geometry: y[n, c, oh, ow] = max over the k x k window at
(oh*s - pad, ow*s - pad) of x, where padding (and the part of a ceil-mode window past the input)
counts as -inf. Backward sends dy to the window's argmax (the first in row-major order on ties,
so exactly one input receives it).

Output size (Caffe, ceil mode): ceil((H + 2 pad - k) / s) + 1, minus one if pad > 0 and the last
window would start at or beyond H + pad; floor mode: floor((H + 2 pad - k) / s) + 1.

CPU method: planes (n, c) go in chunks small enough for cache into a -inf padded polyphase
workspace (the s*s sub-lattices of the padded input, see ``_phases``); there every window tap is
a fixed flat offset from its output, so the running max and the argmax tap (int8) take k*k - 1
contiguous 1-D passes at about output resolution (numpy is several times faster on contiguous
than on strided operands). Backward scatters dy to the argmax positions with add.at. The planes
are taken in memory order, so a channel-major input (``layers/layout.py``) gives a channel-major
output without copies. Planes are independent, so large inputs are split into plane ranges over
``parallel.workers()`` threads, each with its own workspaces (the same result for any number of
workers).
"""
from functools import lru_cache

import numpy as np

from layers import backend, cuda, layout, parallel
from layers.backend import array_module
from layers.base import Layer



def pool_out_size(size, k, stride, pad, ceil_mode=True):
    """Number of pooling windows along one axis (Caffe's rule, see the module docstring)."""
    if ceil_mode:
        out = -(-(size + 2 * pad - k) // stride) + 1
        if pad > 0 and (out - 1) * stride >= size + pad:
            out -= 1
        return out
    return (size + 2 * pad - k) // stride + 1


def check_pool_args(name, ksize, stride, pad):
    """Raise ValueError naming the layer unless ksize, stride >= 1 and 0 <= pad < ksize."""
    if not (isinstance(ksize, int) and isinstance(stride, int) and isinstance(pad, int)) or \
            ksize < 1 or stride < 1 or not 0 <= pad < ksize:
        raise ValueError(f"{name}: need ints ksize >= 1, stride >= 1 and 0 <= pad < ksize; "
                         f"got ksize={ksize!r}, stride={stride!r}, pad={pad!r}")


def saved_geometry(layer):
    """The input shape (N, C, H, W) and (OH, OW, Hp, Wp) kept by a pooling layer's last
    training forward; backward without one is an error naming the layer."""
    if layer.x_shape is None:
        raise RuntimeError(f"{layer.name}: backward needs a forward(x, train=True) first")
    return layer.x_shape, layer.geometry


def pool_geometry(layer, x):
    """(OH, OW, Hp, Wp) for ``x``: output size and a padded size that holds every window."""
    _, _, h, w = x.shape
    k, s, p = layer.k, layer.stride, layer.pad
    if h + 2 * p < k or w + 2 * p < k:
        raise ValueError(f"{layer.name}: input {x.shape} is smaller than the {k}x{k} window "
                         f"with pad {p}")
    oh = pool_out_size(h, k, s, p, layer.ceil_mode)
    ow = pool_out_size(w, k, s, p, layer.ceil_mode)
    return oh, ow, max(h + 2 * p, (oh - 1) * s + k), max(w + 2 * p, (ow - 1) * s + k)


def _phase_range(a, stride, pad, size, out):
    """Rows r < out of phase a (padded rows a + r*stride) that hold input rows, as [lo, hi),
    and the input rows they hold (a slice)."""
    lo = min(out, max(0, -((a - pad) // stride)))
    hi = max(lo, min(out, (size - 1 + pad - a) // stride + 1))
    first = a + lo * stride - pad
    return slice(lo, hi), slice(first, first + (hi - lo - 1) * stride + 1 if hi > lo else first,
                                stride)


@lru_cache(maxsize=256)
def _phases(k, stride, pad, h, w, oh, ow):
    """Polyphase layout of the -inf padded input: phase f = a*s + b holds padded pixels
    (a + r*s, b + q*s) at (r, q), r < Hq = OH + (k-1)//s, q < Wq = OW + (k-1)//s. Window tap
    (i, j) of output (oh, ow) is then pixel (oh + i//s, ow + j//s) of phase (i%s, j%s): in a
    phase's flat (planes, Hq, Wq) layout, a fixed offset from the output's anchor.
    Returns Hq, Wq, the input-to-phase copies and, per tap, (phase, flat offset)."""
    hq, wq = oh + (k - 1) // stride, ow + (k - 1) // stride
    copies = []
    for a in range(stride):
        dst_rows, src_rows = _phase_range(a, stride, pad, h, hq)
        for b in range(stride):
            dst_cols, src_cols = _phase_range(b, stride, pad, w, wq)
            if dst_rows.stop > dst_rows.start and dst_cols.stop > dst_cols.start:
                copies.append((a * stride + b, dst_rows, dst_cols, src_rows, src_cols))
    taps = [((i % stride) * stride + j % stride, (i // stride) * wq + j // stride)
            for i in range(k) for j in range(k)]
    return hq, wq, tuple(copies), tuple(taps)


class MaxPool2D(Layer):
    """Max pooling, NCHW, Caffe geometry (``ceil_mode=True`` is Caffe's; False is floor).

    ``chunk_elems`` (class attribute) bounds the elements of one chunk of planes in forward: its
    s*s polyphase planes plus its running max (so that with the int8 argmax scratch a chunk
    stays within the L2 cache whatever the stride), and the padded size of one in backward.
    """

    chunk_elems = 5 << 16

    def __init__(self, ksize, stride, pad=0, ceil_mode=True):
        super().__init__()
        check_pool_args("MaxPool2D", ksize, stride, pad)
        self.k, self.stride, self.pad, self.ceil_mode = ksize, stride, pad, ceil_mode
        self.idx_dtype = np.int8 if ksize * ksize < 128 else np.int32
        self.x_shape = None
        self._filled = {}     # worker -> (its phase workspace, H, W) last filled

    def forward(self, x, train=True):
        self.check_input(x, 4)
        xp = array_module(x)
        n, c, h, w = x.shape
        k, s = self.k, self.stride
        oh, ow, hp, wp = pool_geometry(self, x)
        if backend.uses_kernels(xp):
            return self._forward_kernels(x, train, xp)
        hq, wq, copies, taps = _phases(k, s, self.pad, h, w, oh, ow)
        planes, area = n * c, hq * wq
        cp = max(1, min(planes, self.chunk_elems // ((s * s + 1) * area)))
        if train:
            self.idx = self.workspace("idx", (planes, oh, ow), self.idx_dtype, xp)
        self.channel_major = layout.is_channel_major(x)
        if not self.channel_major:
            x = xp.ascontiguousarray(x)
        xs = layout.planes(x)
        y = layout.empty_as((n, c, oh, ow), x.dtype, self.channel_major, xp)
        ys = layout.planes(y)

        def run(start, stop, worker):
            phase = self.workspace(("phase", worker), (s * s, cp, hq, wq), x.dtype, xp)
            filled = self._filled.get(worker)
            if filled is None or filled[0] is not phase or filled[1:] != (h, w):
                phase.fill(-np.inf)            # the interior is overwritten, the border stays
                self._filled[worker] = (phase, h, w)
            run_max = self.workspace(("max", worker), (cp * area,), x.dtype, xp)
            if train:
                arg = self.workspace(("arg", worker), (cp * area,), self.idx_dtype, xp)
                gt = self.workspace(("gt", worker), (cp * area,), np.bool_, xp)
                tap = self.workspace(("tap", worker), (cp * area,), self.idx_dtype, xp)
            flat = phase.reshape(s * s, cp * area)
            for p0 in range(start, stop, cp):
                m = min(cp, stop - p0)
                for f, dst_rows, dst_cols, src_rows, src_cols in copies:
                    phase[f, :m, dst_rows, dst_cols] = xs[p0:p0 + m, src_rows, src_cols]
                size = m * area - max(off for _, off in taps)   # anchors with all taps in range
                ymax = run_max[:size]
                ymax[...] = flat[0, :size]                       # tap (0, 0): phase 0, offset 0
                if train:
                    best, gtm, tapm = arg[:size], gt[:size], tap[:size]
                    best[...] = 0
                for t, (f, off) in enumerate(taps[1:], 1):
                    v = flat[f, off:off + size]
                    if train:                  # tap t is a strict new max -> best = t
                        xp.greater(v, ymax, out=gtm)
                        xp.multiply(gtm.view(np.int8), self.idx_dtype(t), out=tapm)
                        xp.maximum(best, tapm, out=best)
                    xp.maximum(ymax, v, out=ymax)
                ys[p0:p0 + m] = run_max[:m * area].reshape(m, hq, wq)[:, :oh, :ow]
                if train:
                    self.idx[p0:p0 + m] = arg[:m * area].reshape(m, hq, wq)[:, :oh, :ow]
        parallel.split_work(xp, planes, run, x.nbytes)
        self.x_shape = x.shape if train else None
        self.geometry = (oh, ow, hp, wp)
        return y

    def _forward_kernels(self, x, train, xp):
        """y and the argmax (int32, the flat index in its plane) by ``pool.cu``."""
        n, c, h, w = x.shape
        oh, ow, hp, wp = pool_geometry(self, x)
        y = xp.empty((n, c, oh, ow), dtype=x.dtype)
        arg = self.workspace("arg_kernel", (n * c, oh, ow), np.int32, xp)
        cuda.launch("pool", "max_forward", x.dtype, y.size,
                    (xp.ascontiguousarray(x), y, arg, n * c, h, w, self.k, self.stride,
                     self.pad, oh, ow, -np.inf))
        self.idx = arg if train else None
        self.x_shape = x.shape if train else None
        self.geometry = (oh, ow, hp, wp)
        return y

    def backward(self, dy):
        (n, c, h, w), (oh, ow, hp, wp) = saved_geometry(self)
        xp = array_module(dy)
        k, s, p = self.k, self.stride, self.pad
        if backend.uses_kernels(xp):
            dx = xp.empty(self.x_shape, dtype=dy.dtype)
            cuda.launch("pool", "max_backward", dy.dtype, dx.size,
                        (xp.ascontiguousarray(dy), self.idx, dx, n * c, h, w, k, s, p, oh, ow))
            return dx
        planes, area = n * c, hp * wp
        cp = max(1, min(planes, self.chunk_elems // area))
        itype = np.int32 if cp * area < 2 ** 31 else np.int64      # positions within a chunk
        offs = xp.asarray([i * wp + j for i in range(k) for j in range(k)], dtype=itype)
        dy = layout.to_channel_major(dy) if self.channel_major else xp.ascontiguousarray(dy)
        dys = layout.planes(dy)                  # the planes in forward's order
        dx = layout.empty_as(self.x_shape, dy.dtype, self.channel_major, xp)
        dxs = layout.planes(dx)

        def run(start, stop, worker):
            base = self.workspace(("base", worker), (cp, oh, ow), itype, xp)
            base[...] = (xp.arange(cp, dtype=itype) * area)[:, None, None] + \
                (xp.arange(oh, dtype=itype) * (s * wp))[:, None] + xp.arange(ow, dtype=itype) * s
            pos = self.workspace(("pos", worker), (cp, oh, ow), itype, xp)
            dpad = self.workspace(("dxpad", worker), (cp * area,), dy.dtype, xp)
            for p0 in range(start, stop, cp):
                m = min(cp, stop - p0)
                posm, d1 = pos[:m], dpad[:m * area]
                xp.take(offs, self.idx[p0:p0 + m], out=posm)
                posm += base[:m]
                d1[...] = 0
                xp.add.at(d1, posm.reshape(-1), dys[p0:p0 + m].reshape(-1))
                dxs[p0:p0 + m] = d1.reshape(m, hp, wp)[:, p:p + h, p:p + w]
        parallel.split_work(xp, planes, run, dx.nbytes)
        return dx
