"""Local response normalization across channels (Krizhevsky et al. 2012), Caffe convention.

    scale[c] = k + (alpha / size) * sum_{j = c - lo}^{c + hi} x[j]^2,    y = x * scale^-beta

NOTE: alpha is divided by ``size`` (as in Caffe and PyTorch's ``LocalResponseNorm``; the
AlexNet paper and TensorFlow's ``local_response_normalization`` use alpha undivided). The window
holds ``size`` channels, lo = (size - 1) // 2 before c and hi = size - 1 - lo after it,
channels outside [0, C) counting as zero. Backward:

    dx[c] = dy[c] * scale[c]^-beta
            - (2 * alpha * beta / size) * x[c] * sum_{j = c - hi}^{c + lo} dy[j] * y[j] / scale[j]

Both window sums are running sums over the channels (add the channel entering the window,
subtract the one leaving it, re-sum the window exactly every ``resync`` channels), one channel
slice (n, H*W) at a time (one contiguous run for channel-major input, ``layers/layout.py``; y
and the stored powers keep x's layout), for blocks of n samples small enough that a window's
slices stay in the L2 cache. A training forward reads x once and writes y, scale^-beta and
(2 alpha beta / size) * scale^(-beta-1); backward reads those with x and dy and writes dx into
dy's memory. beta = 0.75 (the usual value) takes square roots instead of a pow. Samples are
independent, so a large input's samples are split into ranges over ``parallel.workers()``
threads, each with its own ring and row buffers (the same result for any number of workers).
"""
import numpy as np

from layers import backend, cuda, layout, parallel
from layers.backend import array_module
from layers.base import Layer



class LRN(Layer):
    """LRN(size=5, alpha=1e-4, beta=0.75, k=1.0) across channels, Caffe convention: alpha is
    divided by size, y = x * (k + alpha / size * sum of x^2 over ``size`` channels)^-beta."""

    chunk_elems = 1 << 15   # CPU: elements of one channel slice (n samples x H*W) per step
    resync = 16             # channels between exact re-summations of the running window sum

    def __init__(self, size=5, alpha=1e-4, beta=0.75, k=1.0):
        super().__init__()
        if int(size) != size or size < 1:
            raise ValueError(f"LRN: size must be a positive integer, got {size}")
        self.size, self.alpha, self.beta, self.k = int(size), float(alpha), float(beta), float(k)
        self.lo = (self.size - 1) // 2
        self.hi = self.size - 1 - self.lo
        self.stored = None

    def _chunks(self, x3, xp):
        """Sample ranges whose channel slices (n, H*W) hold about ``chunk_elems`` elements (all
        samples on a GPU), so that the slices of one window stay in the L2 cache."""
        n, _, l = x3.shape
        parts = -(-n * l // self.chunk_elems) if xp is np else 1
        nb = -(-n // parts)
        return [slice(n0, n0 + nb) for n0 in range(0, n, nb)], (nb, l)

    def _rows(self, key, shape, n, dtype, xp, worker):
        """Worker's workspace ``key`` of ``shape`` (..., samples, H*W), cut to its first n
        samples."""
        return self.workspace((key, worker), shape, dtype, xp)[..., :n, :]

    def _slide(self, xp, ring, run, j, c, fill):
        """Move the running window sum ``run`` to channels [j - size + 1, j]: ring slot
        j % size trades channel j - size for channel j (``fill(slot, j)`` writes it; zero past
        the last channel). Every ``resync`` steps run is summed afresh from the ring, so
        rounding left by a large value that has left the window does not linger."""
        slot = ring[j % self.size]
        if j >= self.size:
            run -= slot
        if j >= c:
            return
        fill(slot, j)
        if j % self.resync == self.resync - 1 and j >= self.size - 1:
            xp.sum(ring, axis=0, out=run)
        else:
            run += slot

    def _powers(self, xp, s, pw, ratio):
        """pw = s^-beta and, if ratio is given, ratio = (2 alpha beta / size) * pw / s."""
        if self.beta == 0.75:
            xp.sqrt(s, out=pw)
            xp.sqrt(pw, out=pw)
            xp.divide(pw, s, out=pw)          # s^(1/4) / s
        else:
            xp.power(s, -self.beta, out=pw)
        if ratio is not None:
            xp.divide(pw, s, out=ratio)
            ratio *= 2.0 * self.alpha * self.beta / self.size

    def forward(self, x, train=True):
        self.check_input(x, 4)
        xp = array_module(x)
        x3 = x.reshape(x.shape[0], x.shape[1], -1)
        self.stored = None
        if backend.uses_kernels(xp):
            y = xp.empty(x3.shape, dtype=x.dtype)
            return self._forward_kernels(xp.ascontiguousarray(x3), y, train, xp).reshape(x.shape)
        y = xp.empty_like(x3)                  # x's layout (a channel slice: one dense row)
        if train:
            self.stored = (self._like("pow", x3), self._like("ratio", x3))

        def run(start, stop, worker):
            chunks, rows = self._chunks(x3[start:stop], xp)
            for ns in chunks:
                ns = slice(start + ns.start, min(start + ns.stop, stop))
                stored = [a[ns] for a in self.stored] if train else None
                self._forward_chunk(xp, x3[ns], y[ns], stored, rows, worker)
        parallel.split_work(xp, x3.shape[0], run, x3.nbytes)
        self.x3 = x3
        return y.reshape(x.shape)

    def _like(self, key, x3):
        """Workspace ``key`` of x3's shape, channel-major when x3 is (``layers/layout.py``)."""
        n, c, l = x3.shape
        if layout.is_channel_major(x3):
            return self.workspace(key, (c, n, l), x3.dtype).transpose(1, 0, 2)
        return self.workspace(key, x3.shape, x3.dtype)

    def _forward_kernels(self, x3, y, train, xp):
        """GPU (``lrn.cu``): y and the scale, one thread per element; backward recomputes
        y / scale from x and the scale."""
        scale = self.workspace("scale_kernel", x3.shape, x3.dtype, xp)
        n, c, l = x3.shape
        cuda.launch("lrn", "lrn_forward", x3.dtype, y.size,
                    (x3, y, scale, n, c, l, self.lo, self.hi, self.alpha / self.size,
                     self.beta, self.k))
        self.x3, self.stored = x3, ((scale,) if train else None)
        return y

    def _backward_kernels(self, dy3, xp):
        """GPU: dx from x, the stored scale and dy, into a new array (each dx reads its
        neighbours' dy)."""
        (scale,), x3 = self.stored, self.x3
        n, c, l = x3.shape
        dx = xp.empty(x3.shape, x3.dtype)
        cuda.launch("lrn", "lrn_backward", x3.dtype, dx.size,
                    (x3, scale, xp.ascontiguousarray(dy3), dx, n, c, l, self.lo, self.hi,
                     2 * self.alpha * self.beta / self.size, self.beta))
        return dx

    def _forward_chunk(self, xp, x3, y, stored, rows, worker):
        n, c = x3.shape[:2]
        ring = self._rows("ring", (self.size,) + rows, n, x3.dtype, xp, worker)
        run = self._rows("run", rows, n, x3.dtype, xp, worker)
        s = self._rows("scale", rows, n, x3.dtype, xp, worker)
        pw_row = None if stored else self._rows("pow_row", rows, n, x3.dtype, xp, worker)
        a = self.alpha / self.size

        def square(slot, j):                   # slot = (alpha / size) * x[j]^2
            xp.multiply(x3[:, j], a, out=slot)
            slot *= x3[:, j]

        run[...] = 0
        for j in range(c + self.hi):           # the window of channel j - hi ends at j
            self._slide(xp, ring, run, j, c, square)
            ch = j - self.hi
            if ch < 0:
                continue
            xp.add(run, self.k, out=s)
            if stored:
                pw, ratio = stored[0][:, ch], stored[1][:, ch]
                self._powers(xp, s, pw, ratio)
            else:
                pw = pw_row
                self._powers(xp, s, pw, None)
            xp.multiply(x3[:, ch], pw, out=y[:, ch])

    def backward(self, dy):
        if self.stored is None:
            raise RuntimeError("LRN: backward needs a forward with train=True")
        xp = array_module(dy)
        dy3 = dy.reshape(self.x3.shape)
        if backend.uses_kernels(xp):
            return self._backward_kernels(dy3, xp).reshape(dy.shape)
        x3 = self.x3

        def run(start, stop, worker):
            chunks, rows = self._chunks(x3[start:stop], xp)
            for ns in chunks:
                ns = slice(start + ns.start, min(start + ns.stop, stop))
                self._backward_chunk(xp, x3[ns], dy3[ns], [a[ns] for a in self.stored], rows,
                                     worker)
        parallel.split_work(xp, x3.shape[0], run, x3.nbytes)
        return dy3.reshape(dy.shape)

    def _backward_chunk(self, xp, x3, dy3, stored, rows, worker):
        """dy3 <- dx: dx[ch] = dy[ch] * pw[ch] - x[ch] * sum_{j = ch - hi}^{ch + lo} t[j] with
        t[j] = dy[j] * x[j] * ratio[j]; dy[ch] is overwritten after its last read (as dy[j])."""
        n, c = x3.shape[:2]
        pw, ratio = stored
        ring = self._rows("ring", (self.size,) + rows, n, x3.dtype, xp, worker)
        run = self._rows("run", rows, n, x3.dtype, xp, worker)
        t = self._rows("scale", rows, n, x3.dtype, xp, worker)

        def term(slot, j):                     # slot = t[j]
            xp.multiply(dy3[:, j], x3[:, j], out=slot)
            slot *= ratio[:, j]

        run[...] = 0
        for j in range(c + self.lo):           # the window of dx[j - lo] ends at j
            self._slide(xp, ring, run, j, c, term)
            ch = j - self.lo
            if ch < 0:
                continue
            xp.multiply(x3[:, ch], run, out=t)
            dy_ch = dy3[:, ch]
            dy_ch *= pw[:, ch]
            dy_ch -= t
