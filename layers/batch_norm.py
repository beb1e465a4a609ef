"""Batch normalization over (N, H, W) per channel (Ioffe & Szegedy 2015).

    y = gamma * xhat + beta,   xhat = (x - mean) / sqrt(var + eps)

Training uses the batch mean and (biased) variance and updates the running statistics in
``self.state``: running = momentum * running + (1 - momentum) * batch, the running variance
taking the unbiased batch variance (times M / (M - 1), M = N*H*W). Evaluation normalizes with
the running statistics. Backward (training, compact form, sums over N, H, W):

    dx = gamma / (M * std) * (M * dy - sum(dy) - xhat * sum(dy * xhat))
    dgamma = sum(dy * xhat),   dbeta = sum(dy)

and dx = gamma / std * dy in evaluation. Input (N, C, H, W) or (N, C).

The CPU work runs over blocks of (samples, channels) small enough for the L2 cache, and every
per-channel coefficient is expanded once per call into a (C, H*W) table so that each NumPy call
streams whole contiguous rows (broadcasting a (C, 1) column costs a NumPy inner loop per row of
H*W elements, about twice the time of the arithmetic). Statistics come from per-(n, c) row sums
of x and x^2 merged in float64; where E[x^2] - E[x]^2 would lose too much to cancellation
(mean^2 > ``recentre`` * var in some channel) they are taken again from x - mean. So a training
forward reads x twice and writes y once, and backward reads x and dy twice and writes dx into
dy's memory, with
    dx = a * dy + b * x + c,   a = gamma / std,   b = -a * sum(dy * xhat) / (M * std),
    c = -a * sum(dy) / M - b * mean.

All of this is per channel, so on the CPU a large input is split into contiguous channel
ranges over ``parallel.workers()`` threads, each with its own tables and scratch: the result
does not depend on the number of workers (up to the recentring test, taken per range).
"""
import numpy as np

from engine.initializers import Constant
from layers import cuda, parallel
from layers.base import Layer, get_array_module



def _row_sums(xp, a, out):
    """out[n, c] = sum_l a[n, c, l]."""
    if xp is np:
        np.einsum("ncl->nc", a, out=out)
    else:
        out[...] = a.sum(axis=2)


def _row_dots(xp, a, b, out):
    """out[n, c] = sum_l a[n, c, l] * b[n, c, l]."""
    if xp is np:
        np.vecdot(a, b, out=out)
    else:
        out[...] = (a * b).sum(axis=2)


class BatchNorm2D(Layer):
    block_elems = 1 << 16   # CPU block size in elements (a quarter of a MiB in float32)
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
        self._tiling = {}

    def _blocks(self, shape, xp):
        """(index pairs (samples, channels) tiling (N, C), block shape); one block on a GPU.

        Channel blocks are the outer loop, so a block's rows of the coefficient tables stay in
        cache while the samples stream past."""
        key = (shape, xp is np)
        if key not in self._tiling:
            n, c, l = shape
            if xp is not np:
                nb, cb = n, c
            elif c * l <= self.block_elems:
                nb, cb = min(n, self.block_elems // (c * l)), c
            else:
                parts = -(-c * l // self.block_elems)
                nb, cb = 1, -(-c // parts)
            self._tiling[key] = ([(slice(n0, n0 + nb), slice(c0, c0 + cb))
                                  for c0 in range(0, c, cb) for n0 in range(0, n, nb)],
                                 (nb, cb, l))
        return self._tiling[key]

    def _table(self, key, per_channel, x3, xp, worker=0):
        """per_channel (C,) expanded to a (C, L) table in x's dtype."""
        table = self.workspace((key, worker), x3.shape[1:], x3.dtype, xp)
        table[...] = per_channel[:, None]
        return table

    def _scratch(self, x3, block, xp, worker=0):
        """Two (N, C) arrays of per-row partial sums and a block-sized buffer."""
        return (self.workspace(("rows1", worker), x3.shape[:2], x3.dtype, xp),
                self.workspace(("rows2", worker), x3.shape[:2], x3.dtype, xp),
                self.workspace(("block", worker), block, x3.dtype, xp))

    def _moments(self, x3, center, xp, worker):
        """Per-channel means of v and v^2, v = x3 - center (center a table or None), float64."""
        n, _, l = x3.shape
        blocks, block = self._blocks(x3.shape, xp)
        sums, sqsums, work = self._scratch(x3, block, xp, worker)
        for ns, cs in blocks:
            vb = x3[ns, cs]
            if center is not None:
                vb = xp.subtract(vb, center[cs], out=work[:vb.shape[0], :vb.shape[1]])
            _row_sums(xp, vb, sums[ns, cs])
            _row_dots(xp, vb, vb, sqsums[ns, cs])
        m = n * l
        return sums.sum(axis=0, dtype=np.float64) / m, sqsums.sum(axis=0, dtype=np.float64) / m

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
        xp = get_array_module(x)
        x3 = x.reshape(x.shape[0], self.ch, -1)
        m = x3.shape[0] * x3.shape[2]
        if train:
            mean, var = xp.empty(self.ch, np.float64), xp.empty(self.ch, np.float64)
        else:
            mean = self.state["running_mean"].astype(np.float64)
            var = self.state["running_var"].astype(np.float64)
        invstd = xp.empty(self.ch, np.float64)
        gamma, beta = self.params["gamma"], self.params["beta"]
        y = xp.empty(x3.shape, dtype=x.dtype)

        def run(c0, c1, worker):
            xc, yc = x3[:, c0:c1], y[:, c0:c1]
            if train:
                mean[c0:c1], var[c0:c1] = self._batch_stats(
                    lambda center: self._moments(xc, None if center is None else self._table(
                        "center", center, xc, xp, worker), xp, worker), x.dtype, xp)
            invstd[c0:c1] = 1.0 / xp.sqrt(var[c0:c1] + self.eps)
            scale = gamma[c0:c1] * invstd[c0:c1]
            scale_t = self._table("scale", scale, xc, xp, worker)
            offset_t = self._table("offset", beta[c0:c1] - mean[c0:c1] * scale, xc, xp, worker)
            for ns, cs in self._blocks(xc.shape, xp)[0]:
                yb = yc[ns, cs]
                xp.multiply(xc[ns, cs], scale_t[cs], out=yb)
                yb += offset_t[cs]
        if cuda.wanted(xp):                  # GPU: statistics by rows, then one pass
            x3 = xp.ascontiguousarray(x3)
            if train:
                mean[...], var[...] = self._batch_stats(
                    lambda center: self._moments_kernel(x3, center, xp), x.dtype, xp)
            invstd[...] = 1.0 / xp.sqrt(var + self.eps)
            scale = gamma * invstd
            cuda.launch("batch_norm", "affine", x.dtype, y.size,
                        (x3, y, scale.astype(x.dtype), (beta - mean * scale).astype(x.dtype),
                         *x3.shape))
        else:
            parallel.split_work(xp, x3.shape[1], run, x3.nbytes)
        if train:
            rm, rv = self.state["running_mean"], self.state["running_var"]
            rm *= self.momentum
            rm += (1.0 - self.momentum) * mean
            rv *= self.momentum
            rv += (1.0 - self.momentum) * m / max(m - 1, 1) * var
        self.x3, self.train, self.mean, self.invstd = x3, train, mean, invstd
        return y.reshape(x.shape)

    def backward(self, dy):
        xp = get_array_module(dy)
        x3 = self.x3
        m = x3.shape[0] * x3.shape[2]
        dy3 = dy.reshape(x3.shape)
        if cuda.wanted(xp):
            return self._backward_kernels(xp.ascontiguousarray(dy3), m, xp).reshape(dy.shape)

        def run(c0, c1, worker):
            xc, dyc = x3[:, c0:c1], dy3[:, c0:c1]
            blocks, block = self._blocks(xc.shape, xp)
            sums, dots, work = self._scratch(xc, block, xp, worker)
            for ns, cs in blocks:
                dyb = dyc[ns, cs]
                _row_sums(xp, dyb, sums[ns, cs])
                _row_dots(xp, dyb, xc[ns, cs], dots[ns, cs])
            a, b, c = self._coefficients(sums.sum(axis=0, dtype=np.float64),
                                         dots.sum(axis=0, dtype=np.float64), slice(c0, c1), m)
            a_t = self._table("scale", a, xc, xp, worker)
            if not self.train:
                for ns, cs in blocks:
                    dyc[ns, cs] *= a_t[cs]
                return
            b_t = self._table("offset", b, xc, xp, worker)
            c_t = self._table("offset2", c, xc, xp, worker)
            for ns, cs in blocks:
                dyb, xb = dyc[ns, cs], xc[ns, cs]
                wb = xp.multiply(xb, b_t[cs], out=work[:xb.shape[0], :xb.shape[1]])
                wb += c_t[cs]
                dyb *= a_t[cs]
                dyb += wb
        parallel.split_work(xp, x3.shape[1], run, x3.nbytes)
        return dy3.reshape(dy.shape)

    def _backward_kernels(self, dy3, m, xp):
        """GPU: per-row sums of dy and dy * x, then dx = a dy + b x + c in place
        (``batch_norm.cu``)."""
        n, c, l = dy3.shape
        sums, dots = self._row_sums_kernel("row_grads", dy3, self.x3, xp)
        a, b, d = self._coefficients(sums, dots, slice(None), m)
        cuda.launch("batch_norm", "backward", dy3.dtype, dy3.size,
                    (dy3, self.x3, a.astype(dy3.dtype), b.astype(dy3.dtype), d.astype(dy3.dtype),
                     n, c, l))
        return dy3
