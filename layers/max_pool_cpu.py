"""MaxPool2D on the CPU (NumPy).

Forward: planes (n, c) go in chunks small enough for cache into a -inf padded polyphase
workspace (the s*s sub-lattices of the padded input, ``window.pool_phases``); there every
window tap is a fixed flat offset from its output, so the running max and the argmax tap (int8)
take k*k - 1 contiguous 1-D passes at about output resolution (contiguous operands, which NumPy
runs much faster than strided ones):

    ymax = tap 0;  for t = 1 .. k*k-1:  best = t where tap t > ymax (strictly);  ymax = max

Backward scatters dy to the argmax positions of a zero-padded plane with add.at and crops it.
The planes are taken in memory order, so a channel-major input (``layers/layout.py``) gives a
channel-major output without copies. Planes are independent, so large inputs are split into
plane ranges over ``parallel.workers()`` threads, each with its own workspaces (the same result
for any number of workers).
"""
from typing import NamedTuple

import numpy as np

from layers import layout, max_pool_c, parallel
from layers.window import pool_phases


class Saved(NamedTuple):
    """What a CPU forward keeps for backward (training only)."""
    x_shape: tuple        # (N, C, H, W)
    geometry: tuple       # (OH, OW, Hp, Wp)
    idx: np.ndarray       # (planes, OH, OW): each window's argmax tap, planes in memory order
    channel_major: bool   # x's layout, which dx takes


def forward(layer, x, train):
    """y (x's layout: channel-major or C order) and, when ``train``, the ``Saved`` state."""
    n, c, h, w = x.shape
    k, s = layer.k, layer.stride
    oh, ow, hp, wp = layer.geometry(x.shape)
    hq, wq, copies, taps = pool_phases(k, s, layer.pad, h, w, oh, ow)
    planes, area = n * c, hq * wq
    cp = max(1, min(planes, layer.chunk_elems // ((s * s + 1) * area)))
    idx = layer.workspace("idx", (planes, oh, ow), layer.idx_dtype, np) if train else None
    channel_major = layout.is_channel_major(x)
    if not channel_major:
        x = np.ascontiguousarray(x)
    xs = layout.planes(x)
    y = layout.empty_as((n, c, oh, ow), x.dtype, channel_major, np)
    ys = layout.planes(y)

    def run(start, stop, worker):
        phase = _phase_workspace(layer, worker, (s * s, cp, hq, wq), x.dtype, h, w)
        run_max = layer.workspace(("max", worker), (cp * area,), x.dtype, np)
        if train:
            arg = layer.workspace(("arg", worker), (cp * area,), layer.idx_dtype, np)
            gt = layer.workspace(("gt", worker), (cp * area,), np.bool_, np)
            tap = layer.workspace(("tap", worker), (cp * area,), layer.idx_dtype, np)
        argmax = (arg, gt, tap) if train else None
        flat = phase.reshape(s * s, cp * area)
        for p0 in range(start, stop, cp):
            m = min(cp, stop - p0)
            for f, dst_rows, dst_cols, src_rows, src_cols in copies:
                phase[f, :m, dst_rows, dst_cols] = xs[p0:p0 + m, src_rows, src_cols]
            _running_max(flat, taps, m * area, run_max, argmax, layer.idx_dtype)
            ys[p0:p0 + m] = run_max[:m * area].reshape(m, hq, wq)[:, :oh, :ow]
            if train:
                idx[p0:p0 + m] = arg[:m * area].reshape(m, hq, wq)[:, :oh, :ow]
    parallel.split_work(np, planes, run, x.nbytes)
    return y, (Saved(x.shape, (oh, ow, hp, wp), idx, channel_major) if train else None)


def _phase_workspace(layer, worker, shape, dtype, h, w):
    """Worker's polyphase workspace, filled with -inf when new or last used for another input
    size (the interior is overwritten every chunk, the border stays -inf)."""
    phase = layer.workspace(("phase", worker), shape, dtype, np)
    filled = layer._filled.get(worker)
    if filled is None or filled[0] is not phase or filled[1:] != (h, w):
        phase.fill(-np.inf)
        layer._filled[worker] = (phase, h, w)
    return phase


def _running_max(flat, taps, used, run_max, argmax, idx_dtype):
    """The window max of the first ``used`` anchors of the phase planes ``flat`` into
    ``run_max`` and, with ``argmax`` (the arg, gt and tap scratch), the first tap reaching it
    into arg."""
    size = used - max(off for _, off in taps)       # anchors with all taps in range
    ymax = run_max[:size]
    ymax[...] = flat[0, :size]                       # tap (0, 0): phase 0, offset 0
    if argmax is not None:
        best, gtm, tapm = (a[:size] for a in argmax)
        best[...] = 0
    for t, (f, off) in enumerate(taps[1:], 1):
        v = flat[f, off:off + size]
        if argmax is not None:                       # tap t is a strict new max -> best = t
            np.greater(v, ymax, out=gtm)
            np.multiply(gtm.view(np.int8), idx_dtype(t), out=tapm)
            np.maximum(best, tapm, out=best)
        np.maximum(ymax, v, out=ymax)


def backward(layer, saved, dy):
    """dx in the input's layout: dy added at each window's argmax of a zero-padded plane (in
    C, ``layers/max_pool_c.py``, where its library is built)."""
    (n, c, h, w), (oh, ow, hp, wp) = saved.x_shape, saved.geometry
    k, s, p = layer.k, layer.stride, layer.pad
    planes, area = n * c, hp * wp
    cp = max(1, min(planes, layer.chunk_elems // area))
    itype = np.int32 if cp * area < 2 ** 31 else np.int64      # positions within a chunk
    offs = np.asarray([i * wp + j for i in range(k) for j in range(k)], dtype=itype)
    dy = layout.to_channel_major(dy) if saved.channel_major else np.ascontiguousarray(dy)
    dys = layout.planes(dy)                  # the planes in forward's order
    dx = layout.empty_as(saved.x_shape, dy.dtype, saved.channel_major, np)
    dxs = layout.planes(dx)
    if max_pool_c.takes(layer, dy.dtype):
        max_pool_c.scatter(layer, saved, dys, dxs)
        return dx

    def run(start, stop, worker):
        base = layer.workspace(("base", worker), (cp, oh, ow), itype, np)
        base[...] = (np.arange(cp, dtype=itype) * area)[:, None, None] + \
            (np.arange(oh, dtype=itype) * (s * wp))[:, None] + np.arange(ow, dtype=itype) * s
        pos = layer.workspace(("pos", worker), (cp, oh, ow), itype, np)
        dpad = layer.workspace(("dxpad", worker), (cp * area,), dy.dtype, np)
        for p0 in range(start, stop, cp):
            m = min(cp, stop - p0)
            posm, d1 = pos[:m], dpad[:m * area]
            np.take(offs, saved.idx[p0:p0 + m], out=posm)
            posm += base[:m]
            d1[...] = 0
            np.add.at(d1, posm.reshape(-1), dys[p0:p0 + m].reshape(-1))
            dxs[p0:p0 + m] = d1.reshape(m, hp, wp)[:, p:p + h, p:p + w]
    parallel.split_work(np, planes, run, dx.nbytes)
    return dx
