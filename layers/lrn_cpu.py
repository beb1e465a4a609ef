"""LRN on the CPU (NumPy).

Both window sums (of (alpha / size) x^2 in forward, of t = dy * x * ratio in backward) are
running sums over the channels: add the channel entering the window, subtract the one leaving
it, re-sum the window exactly every ``resync`` channels. They run one channel slice (n, H*W) at
a time (one contiguous run for channel-major input, ``layers/layout.py``; y and the saved
powers keep x's layout), for blocks of n samples small enough that a window's slices stay in
the L2 cache (``LRN._chunks``). A training forward reads x once and writes y,
pw = scale^-beta and ratio = (2 alpha beta / size) * scale^(-beta-1); backward reads those with
x and dy and writes dx into dy's memory:

    dx[c] = dy[c] * pw[c] - x[c] * sum_{j = c - hi}^{c + lo} dy[j] * x[j] * ratio[j]

beta = 0.75 (the usual value) takes square roots instead of a pow. Samples are independent, so
a large input's samples are split into ranges over ``parallel.workers()`` threads, each with its
own ring and row buffers (the same result for any number of workers).
"""
from typing import NamedTuple

import numpy as np

from layers import layout, parallel


class Saved(NamedTuple):
    """What a CPU forward keeps for backward (training only)."""
    x3: np.ndarray       # the input as (N, C, H*W), in its own layout
    pw: np.ndarray       # scale^-beta, x3's shape and layout
    ratio: np.ndarray    # (2 alpha beta / size) * scale^(-beta-1), likewise


def forward(layer, x, train):
    """y (x's layout) and, when ``train``, the ``Saved`` state."""
    x3 = x.reshape(x.shape[0], x.shape[1], -1)
    y = np.empty_like(x3)                  # x's layout (a channel slice: one dense row)
    stored = (_like(layer, "pow", x3), _like(layer, "ratio", x3)) if train else None

    def run(start, stop, worker):
        chunks, rows = layer._chunks(x3[start:stop], np)
        for ns in chunks:
            ns = slice(start + ns.start, min(start + ns.stop, stop))
            part = [a[ns] for a in stored] if train else None
            _forward_chunk(layer, x3[ns], y[ns], part, rows, worker)
    parallel.split_work(np, x3.shape[0], run, x3.nbytes)
    return y.reshape(x.shape), (Saved(x3, *stored) if train else None)


def backward(layer, saved, dy):
    """dx, written into ``dy``'s memory."""
    x3 = saved.x3
    dy3 = dy.reshape(x3.shape)

    def run(start, stop, worker):
        chunks, rows = layer._chunks(x3[start:stop], np)
        for ns in chunks:
            ns = slice(start + ns.start, min(start + ns.stop, stop))
            _backward_chunk(layer, x3[ns], dy3[ns], (saved.pw[ns], saved.ratio[ns]), rows,
                            worker)
    parallel.split_work(np, x3.shape[0], run, x3.nbytes)
    return dy3.reshape(dy.shape)


def _like(layer, key, x3):
    """Workspace ``key`` of x3's shape, channel-major when x3 is (``layers/layout.py``)."""
    n, c, l = x3.shape
    if layout.is_channel_major(x3):
        return layer.workspace(key, (c, n, l), x3.dtype).transpose(1, 0, 2)
    return layer.workspace(key, x3.shape, x3.dtype)


def _rows(layer, key, shape, n, dtype, worker):
    """Worker's workspace ``key`` of ``shape`` (..., samples, H*W), cut to its first n
    samples."""
    return layer.workspace((key, worker), shape, dtype, np)[..., :n, :]


def _slide(layer, ring, run, j, c, fill):
    """Move the running window sum ``run`` to channels [j - size + 1, j]: ring slot
    j % size trades channel j - size for channel j (``fill(slot, j)`` writes it; zero past
    the last channel). Every ``resync`` steps run is summed afresh from the ring, so
    rounding left by a large value that has left the window does not linger."""
    slot = ring[j % layer.size]
    if j >= layer.size:
        run -= slot
    if j >= c:
        return
    fill(slot, j)
    if j % layer.resync == layer.resync - 1 and j >= layer.size - 1:
        np.sum(ring, axis=0, out=run)
    else:
        run += slot


def _powers(layer, s, pw, ratio):
    """pw = s^-beta and, if ratio is given, ratio = (2 alpha beta / size) * pw / s."""
    if layer.beta == 0.75:
        np.sqrt(s, out=pw)
        np.sqrt(pw, out=pw)
        np.divide(pw, s, out=pw)          # s^(1/4) / s
    else:
        np.power(s, -layer.beta, out=pw)
    if ratio is not None:
        np.divide(pw, s, out=ratio)
        ratio *= 2.0 * layer.alpha * layer.beta / layer.size


def _forward_chunk(layer, x3, y, stored, rows, worker):
    """y for a block of samples; with ``stored`` (pw, ratio slices) those too."""
    n, c = x3.shape[:2]
    ring = _rows(layer, "ring", (layer.size,) + rows, n, x3.dtype, worker)
    run = _rows(layer, "run", rows, n, x3.dtype, worker)
    s = _rows(layer, "scale", rows, n, x3.dtype, worker)
    pw_row = None if stored else _rows(layer, "pow_row", rows, n, x3.dtype, worker)
    a = layer.alpha / layer.size

    def square(slot, j):                   # slot = (alpha / size) * x[j]^2
        np.multiply(x3[:, j], a, out=slot)
        slot *= x3[:, j]

    run[...] = 0
    for j in range(c + layer.hi):          # the window of channel j - hi ends at j
        _slide(layer, ring, run, j, c, square)
        ch = j - layer.hi
        if ch < 0:
            continue
        np.add(run, layer.k, out=s)
        if stored:
            pw, ratio = stored[0][:, ch], stored[1][:, ch]
            _powers(layer, s, pw, ratio)
        else:
            pw = pw_row
            _powers(layer, s, pw, None)
        np.multiply(x3[:, ch], pw, out=y[:, ch])


def _backward_chunk(layer, x3, dy3, stored, rows, worker):
    """dy3 <- dx: dx[ch] = dy[ch] * pw[ch] - x[ch] * sum_{j = ch - hi}^{ch + lo} t[j] with
    t[j] = dy[j] * x[j] * ratio[j]; dy[ch] is overwritten after its last read (as dy[j])."""
    n, c = x3.shape[:2]
    pw, ratio = stored
    ring = _rows(layer, "ring", (layer.size,) + rows, n, x3.dtype, worker)
    run = _rows(layer, "run", rows, n, x3.dtype, worker)
    t = _rows(layer, "scale", rows, n, x3.dtype, worker)

    def term(slot, j):                     # slot = t[j]
        np.multiply(dy3[:, j], x3[:, j], out=slot)
        slot *= ratio[:, j]

    run[...] = 0
    for j in range(c + layer.lo):          # the window of dx[j - lo] ends at j
        _slide(layer, ring, run, j, c, term)
        ch = j - layer.lo
        if ch < 0:
            continue
        np.multiply(x3[:, ch], run, out=t)
        dy_ch = dy3[:, ch]
        dy_ch *= pw[:, ch]
        dy_ch -= t
