"""Batch normalization over (N, H, W) per channel (Ioffe & Szegedy 2015).

    y = gamma * xhat + beta,   xhat = (x - mean) / sqrt(var + eps)

Training uses the batch mean and (biased) variance and updates the running statistics in
``self.state``: running = momentum * running + (1 - momentum) * batch, the running variance
taking the unbiased batch variance (times M / (M - 1), M = N*H*W). Evaluation normalizes with
the running statistics. Backward (training, compact form, sums over N, H, W):

    dx = gamma / (M * std) * (M * dy - sum(dy) - xhat * sum(dy * xhat))
    dgamma = sum(dy * xhat),   dbeta = sum(dy)

and dx = gamma / std * dy in evaluation. Input (N, C, H, W) or (N, C).

Both routes compute y = x * scale + offset (scale = gamma / std, offset = beta - mean * scale)
and dx = a * dy + b * x + c per channel, with

    a = gamma / std,   b = -a * sum(dy * xhat) / (M * std),   c = -a * sum(dy) / M - b * mean

(b = c = 0 in evaluation), from float64 per-channel sums; where E[x^2] - E[x]^2 would lose too
much to cancellation (mean^2 > ``recentre`` * var in some channel) the moments are taken again
from x - mean. Routes: ``layers/batch_norm_cpu.py`` (NumPy, channel-major rows, worker threads
over channel ranges) and ``layers/batch_norm_gpu.py`` (``layers/cuda/batch_norm.cu``);
``backend.uses_kernels`` picks one per call.

Synchronized (``sync``, set by a sync rule: ``sync_bn: true`` under BSP): the batch is every
worker's batch together. The per-channel means of x and x^2 are averaged over the workers (one
all-reduce of 2C values; a second where the recentring runs), and so, in backward, are the sums
of dy and dy * x, from which a, b and c come (M is then every worker's elements); the gradients
of gamma and beta stay the worker's own, which the rule averages with the others. With equal
batches on every worker this is one process's BatchNorm over the union of the batches.
"""
from typing import NamedTuple

import numpy as np

from layers import batch_norm_cpu, batch_norm_gpu
from layers.backend import array_module
from layers.base import RoutedLayer
from layers.initializers import Constant


class Stats(NamedTuple):
    """Per-channel float64 statistics of one forward (the routes fill them)."""
    train: bool           # batch statistics (True) or the running ones
    mean: object          # (C,)
    var: object           # (C,), biased
    invstd: object        # (C,): 1 / sqrt(var + eps)


class BatchNorm2D(RoutedLayer):
    cpu_route, gpu_route = batch_norm_cpu, batch_norm_gpu
    block_elems = 1 << 20   # CPU: elements of one block of channels (at least one channel)
    segment_elems = 1 << 12  # CPU: longest float32 partial sum
    row_parts = 32          # GPU: partial sums per (n, c) row, one warp's worth
    recentre = 64.0         # mean^2 / var above which the variance is recomputed centred
    c_passes = True         # CPU: the C passes (layers/batch_norm_c.py) where they are built
    fuse_relu = False       # an in-place ReLU follows (set by Sequential: ``relu.fuse``)

    def __init__(self, ch, eps=1e-5, momentum=0.9):
        super().__init__()
        self.ch, self.eps, self.momentum = int(ch), float(eps), float(momentum)
        # synchronized BatchNorm: a callable averaging float64 arrays over the workers in place
        # (its ``size`` is their number), or None for this worker's batch alone
        self.sync = None
        self.param_shapes["gamma"] = (self.ch,)
        self.initializers["gamma"] = Constant(1.0)
        self.param_shapes["beta"] = (self.ch,)
        self.initializers["beta"] = Constant(0.0)
        self.state["running_mean"] = np.zeros(self.ch)
        self.state["running_var"] = np.ones(self.ch)


    def check(self, x):
        self.check_input(x, 2 if getattr(x, "ndim", None) == 2 else 4, self.ch)

    def rectifies(self, xp):
        """Whether, with ``fuse_relu``, this layer applies the ReLU after it (forward and its
        mask in backward) for arrays of ``xp``: on the CPU routes; the kernel route leaves it
        to the ReLU."""
        return self.route(xp) is self.cpu_route

    masks = rectifies

    def forward(self, x, train=True):
        y = super().forward(x, train)
        if train:
            m, stats = x.size // self.ch, self.saved().stats
            rm, rv = self.state["running_mean"], self.state["running_var"]
            rm *= self.momentum
            rm += (1.0 - self.momentum) * stats.mean
            rv *= self.momentum
            rv += (1.0 - self.momentum) * m / max(m - 1, 1) * stats.var
        return y

    # -- the equations both routes share ---------------------------------------------------
    def _stats(self, train, xp):
        """``Stats`` to fill: empty batch mean and variance in training, else copies of the
        running statistics; 1 / std empty."""
        if train:
            mean, var = xp.empty(self.ch, np.float64), xp.empty(self.ch, np.float64)
        else:
            mean = self.state["running_mean"].astype(np.float64)
            var = self.state["running_var"].astype(np.float64)
        return Stats(train, mean, var, xp.empty(self.ch, np.float64))

    def _synced(self, moments):
        """``moments`` (center -> this worker's per-channel means of v and v^2) averaged over
        the workers: the means over every worker's batch (equal batches)."""
        def averaged(center):
            mean, sq = moments(center)
            both = array_module(mean).concatenate([mean, sq])
            self.sync(both)
            return both[:self.ch], both[self.ch:]
        return averaged

    def _synced_coefficients(self, stats, sum_dy, sum_dy_x, m):
        """For every channel: the worker's own gradients of gamma and beta from its sums, and
        (a, b, c) from the sums over every worker (M elements each)."""
        self._coefficients(stats, sum_dy, sum_dy_x, slice(None), m)
        both = array_module(sum_dy).concatenate([sum_dy, sum_dy_x])
        self.sync(both)
        size = self.sync.size
        return self._coefficients(stats, both[:self.ch] * size, both[self.ch:] * size,
                                  slice(None), m * size, write_grads=False)

    def _batch_stats(self, moments, dtype, xp, centred=False):
        """Per-channel mean and biased variance, in float64, from ``moments(center)``: the
        per-channel means of v and v^2, v = x - center (center: per-channel values in x's
        ``dtype``, or None for none). ``centred`` (the GPU) always takes the moments again about
        the mean, rather than asking the device whether cancellation calls for it."""
        mean, sq = moments(None)
        var = sq - mean * mean
        if centred or bool(xp.any(mean * mean > self.recentre * var)):
            center = mean.astype(dtype)
            shift, sq = moments(center)
            mean = center.astype(np.float64) + shift
            var = sq - shift * shift
        return mean, xp.maximum(var, 0.0)

    def _affine(self, stats, channels):
        """scale = gamma / std and offset = beta - mean * scale for ``channels`` (a slice),
        keeping 1 / std in ``stats.invstd``."""
        var, invstd = stats.var, stats.invstd
        invstd[channels] = 1.0 / array_module(var).sqrt(var[channels] + self.eps)
        scale = self.params["gamma"][channels] * invstd[channels]
        return scale, self.params["beta"][channels] - stats.mean[channels] * scale

    def _coefficients(self, stats, sum_dy, sum_dy_x, channels, m, write_grads=True):
        """Write the gradients of gamma and beta for ``channels`` (a slice) from the sums of dy
        and dy * x over (N, L) (unless not ``write_grads``); return (a, b, c) of
        dx = a * dy + b * x + c per channel."""
        mean, invstd = stats.mean[channels], stats.invstd[channels]
        sum_dy_xhat = (sum_dy_x - mean * sum_dy) * invstd
        if write_grads:
            self.grads["beta"][channels] = sum_dy
            self.grads["gamma"][channels] = sum_dy_xhat
        a = self.params["gamma"][channels] * invstd
        if not stats.train:
            return a, 0 * a, 0 * a
        b = -a * invstd * sum_dy_xhat / m
        return a, b, -a * sum_dy / m - b * mean
