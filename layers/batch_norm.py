"""Batch normalization over (N, H, W) per channel (Ioffe & Szegedy 2015).

    y = gamma * xhat + beta,   xhat = (x - mean) / sqrt(var + eps)

Training uses the batch mean and (biased) variance and updates the running statistics in
``self.state``: running = momentum * running + (1 - momentum) * batch, the running variance
taking the unbiased batch variance (times M / (M - 1), M = N*H*W). Evaluation normalizes with
the running statistics. Backward (training, compact form, sums over N, H, W):

    dx = gamma / (M * std) * (M * dy - sum(dy) - xhat * sum(dy * xhat))
    dgamma = sum(dy * xhat),   dbeta = sum(dy)

and dx = gamma / std * dy in evaluation. Input (N, C, H, W) or (N, C).

On the CPU the work runs on x's channel-major rows (``layers/layout.py``; an input in another
layout is copied once): each channel is one contiguous row of M elements, taken in blocks of
whole channels of about ``block_elems`` elements (4 MiB of float32: fewer and longer NumPy
calls beat L2-sized blocks, see bench/README.md). Statistics come from float32 partial sums
over segments of the rows (``segment_elems`` at most) merged in float64; where
E[x^2] - E[x]^2 would lose too much to cancellation (mean^2 > ``recentre`` * var in some
channel) they are taken again from x - mean. A training forward writes
y = x * scale + offset; backward writes dx into dy's memory, with

    dx = a * dy + b * x + c,   a = gamma / std,   b = -a * sum(dy * xhat) / (M * std),
    c = -a * sum(dy) / M - b * mean.

Channel ranges are split over ``parallel.workers()`` threads, each with its own scratch: the
result does not depend on the number of workers (up to the recentring test, taken per block).
"""
import numpy as np

from layers.initializers import Constant
from layers import backend, cuda, layout, parallel
from layers.backend import array_module
from layers.base import Layer


def _segment(n, per_sample, limit):
    """Length of the segments a channel's row of n * per_sample elements is summed in: whole
    samples, as many as divide n and fit ``limit`` (at least one sample)."""
    k = max(1, min(n, limit // max(1, per_sample)))
    while n % k:
        k -= 1
    return k * per_sample


class BatchNorm2D(Layer):
    block_elems = 1 << 20   # CPU: elements of one block of channels (at least one channel)
    segment_elems = 1 << 12  # CPU: longest float32 partial sum
    row_parts = 32          # GPU: partial sums per (n, c) row, one warp's worth
    recentre = 64.0         # mean^2 / var above which the variance is recomputed centred

    def __init__(self, ch, eps=1e-5, momentum=0.9):
        super().__init__()
        self.ch, self.eps, self.momentum = int(ch), float(eps), float(momentum)
        self.param_shapes["gamma"] = (self.ch,)
        self.initializers["gamma"] = Constant(1.0)
        self.param_shapes["beta"] = (self.ch,)
        self.initializers["beta"] = Constant(0.0)
        self.state["running_mean"] = np.zeros(self.ch)
        self.state["running_var"] = np.ones(self.ch)

    def _block_channels(self, m):
        """Channels per CPU block: rows of m elements, about ``block_elems`` in all."""
        return max(1, min(self.ch, self.block_elems // m))

    def _channel_blocks(self, c0, c1, m):
        """Ranges of whole channels covering [c0, c1), ``_block_channels`` each."""
        cb = self._block_channels(m)
        return [(b0, min(b0 + cb, c1)) for b0 in range(c0, c1, cb)]

    def _scratch(self, key, block, worker):
        """Worker's scratch ``key`` shaped like ``block`` (rows of one channel block)."""
        cb, m = block.shape
        return self.workspace((key, worker), (self._block_channels(m), m), block.dtype)[:cb]

    def _segment_sums(self, a, b, worker):
        """Per-channel float64 sums of a and of a * b over a block of rows (cb, M): float32
        partial sums over segments (``_segment``), the segments added in float64."""
        cb, m = a.shape
        seg = self.segment
        a3 = a.reshape(cb, m // seg, seg)
        part = self.workspace(("parts", worker), (self._block_channels(m), m // seg),
                              a.dtype)[:cb]
        np.einsum("csl->cs", a3, out=part)
        sums = part.sum(axis=1, dtype=np.float64)
        np.vecdot(a3, b.reshape(a3.shape), out=part)
        return sums, part.sum(axis=1, dtype=np.float64)

    def _moments(self, xb, center, worker):
        """Per-channel means of v and v^2, v = xb - center (center per channel in x's dtype,
        or None), in float64."""
        v = xb
        if center is not None:
            scratch = self._scratch("centred", xb, worker)
            v = np.subtract(xb, center[:, None], out=scratch)
        sums, squares = self._segment_sums(v, v, worker)
        return sums / xb.shape[1], squares / xb.shape[1]

    def _batch_stats(self, moments, dtype, xp):
        """Per-channel mean and biased variance, in float64, from ``moments(center)``: the
        per-channel means of v and v^2, v = x - center (center: per-channel values in x's
        ``dtype``, or None for none)."""
        mean, sq = moments(None)
        var = sq - mean * mean
        if bool(xp.any(mean * mean > self.recentre * var)):
            center = mean.astype(dtype)
            shift, sq = moments(center)
            mean = center.astype(np.float64) + shift
            var = sq - shift * shift
        return mean, xp.maximum(var, 0.0)

    def _row_sums_kernel(self, kernel, a, b, xp):
        """Per-channel totals of ``kernel``'s two row sums over (N, L) (``batch_norm.cu``:
        ``row_parts`` partial sums per (n, c) row, added here), in float64."""
        n, c, l = a.shape
        first = self.workspace("sums_kernel", (n, c, self.row_parts), np.float64, xp)
        second = self.workspace("squares_kernel", (n, c, self.row_parts), np.float64, xp)
        cuda.launch("batch_norm", kernel, a.dtype, first.size,
                    (a, b, first, second, n, c, l, self.row_parts))
        return first.sum(axis=(0, 2)), second.sum(axis=(0, 2))

    def _moments_kernel(self, x3, center, xp):
        """``moments`` on the GPU."""
        n, c, l = x3.shape
        sums, squares = self._row_sums_kernel(
            "row_moments", x3, xp.zeros(c, x3.dtype) if center is None else center, xp)
        return sums / (n * l), squares / (n * l)

    def _coefficients(self, sum_dy, sum_dy_x, channels, m):
        """Write the gradients of gamma and beta for ``channels`` (a slice) from the sums of dy
        and dy * x over (N, L); return (a, b, c) of dx = a * dy + b * x + c per channel."""
        mean, invstd = self.mean[channels], self.invstd[channels]
        sum_dy_xhat = (sum_dy_x - mean * sum_dy) * invstd
        self.grads["beta"][channels] = sum_dy
        self.grads["gamma"][channels] = sum_dy_xhat
        a = self.params["gamma"][channels] * invstd
        if not self.train:
            return a, 0 * a, 0 * a
        b = -a * invstd * sum_dy_xhat / m
        return a, b, -a * sum_dy / m - b * mean

    def forward(self, x, train=True):
        self.check_input(x, 2 if getattr(x, "ndim", None) == 2 else 4, self.ch)
        xp = array_module(x)
        m = x.size // self.ch
        if train:
            mean, var = xp.empty(self.ch, np.float64), xp.empty(self.ch, np.float64)
        else:
            mean = self.state["running_mean"].astype(np.float64)
            var = self.state["running_var"].astype(np.float64)
        self.train, self.mean = train, mean
        self.invstd = xp.empty(self.ch, np.float64)
        if backend.uses_kernels(xp):
            y = self._forward_kernels(x, train, var, xp)
        else:
            y = self._forward_rows(x, train, var)
        if train:
            rm, rv = self.state["running_mean"], self.state["running_var"]
            rm *= self.momentum
            rm += (1.0 - self.momentum) * mean
            rv *= self.momentum
            rv += (1.0 - self.momentum) * m / max(m - 1, 1) * var
        return y

    def _affine(self, channels, var):
        """scale = gamma / std and offset = beta - mean * scale for ``channels`` (a slice),
        keeping 1 / std."""
        self.invstd[channels] = 1.0 / array_module(var).sqrt(var[channels] + self.eps)
        scale = self.params["gamma"][channels] * self.invstd[channels]
        return scale, self.params["beta"][channels] - self.mean[channels] * scale

    def _forward_rows(self, x, train, var):
        """CPU: statistics and y = x * scale + offset a block of channel rows at a time."""
        x = layout.to_channel_major(x)
        y = layout.empty(x.shape, x.dtype)
        xr, yr = layout.rows(x), layout.rows(y)
        self.x_rows, self.segment = xr, _segment(x.shape[0], xr.shape[1] // x.shape[0],
                                                 self.segment_elems)

        def run(c0, c1, worker):
            for b0, b1 in self._channel_blocks(c0, c1, xr.shape[1]):
                xb, yb, cs = xr[b0:b1], yr[b0:b1], slice(b0, b1)
                if train:
                    self.mean[cs], var[cs] = self._batch_stats(
                        lambda center: self._moments(xb, center, worker), x.dtype, np)
                scale, offset = self._affine(cs, var)
                np.multiply(xb, scale.astype(x.dtype)[:, None], out=yb)
                yb += offset.astype(x.dtype)[:, None]
        parallel.split_work(np, self.ch, run, x.nbytes)
        return y

    def _forward_kernels(self, x, train, var, xp):
        """GPU: statistics by rows, then one affine pass (``batch_norm.cu``)."""
        x3 = xp.ascontiguousarray(x.reshape(x.shape[0], self.ch, -1))
        if train:
            self.mean[...], var[...] = self._batch_stats(
                lambda center: self._moments_kernel(x3, center, xp), x.dtype, xp)
        scale, offset = self._affine(slice(None), var)
        y = xp.empty(x3.shape, dtype=x.dtype)
        cuda.launch("batch_norm", "affine", x.dtype, y.size,
                    (x3, y, scale.astype(x.dtype), offset.astype(x.dtype), *x3.shape))
        self.x3 = x3
        return y.reshape(x.shape)

    def backward(self, dy):
        xp = array_module(dy)
        if backend.uses_kernels(xp):
            dy3 = xp.ascontiguousarray(dy.reshape(self.x3.shape))
            return self._backward_kernels(dy3, xp).reshape(dy.shape)
        dy = layout.to_channel_major(dy)
        dyr, xr = layout.rows(dy), self.x_rows
        m = xr.shape[1]

        def run(c0, c1, worker):
            for b0, b1 in self._channel_blocks(c0, c1, m):
                dyb, xb = dyr[b0:b1], xr[b0:b1]
                sums, dots = self._segment_sums(dyb, xb, worker)
                a, b, c = (v.astype(dy.dtype)[:, None]
                           for v in self._coefficients(sums, dots, slice(b0, b1), m))
                dyb *= a
                if self.train:
                    t = np.multiply(xb, b, out=self._scratch("term", xb, worker))
                    t += c
                    dyb += t
        parallel.split_work(np, self.ch, run, dy.nbytes)
        return dy

    def _backward_kernels(self, dy3, xp):
        """GPU: per-row sums of dy and dy * x, then dx = a dy + b x + c in place
        (``batch_norm.cu``)."""
        n, c, l = dy3.shape
        sums, dots = self._row_sums_kernel("row_grads", dy3, self.x3, xp)
        a, b, d = self._coefficients(sums, dots, slice(None), n * l)
        cuda.launch("batch_norm", "backward", dy3.dtype, dy3.size,
                    (dy3, self.x3, a.astype(dy3.dtype), b.astype(dy3.dtype), d.astype(dy3.dtype),
                     n, c, l))
        return dy3
