"""Residual's CPU passes with the in-place ReLU after it fused (``Residual.fuse_relu``):

    forward:   out = max(body + shortcut, 0)
    backward:  dy *= (out > 0);  copy = dy      (dy for the body, its copy for the shortcut)

Each is one sweep of cache-sized blocks split over the worker threads (``layers/parallel.py``)
where the arrays lie alike in one dense block (the channel-major activations), so that the sum
is rectified and the masked dy copied while the block is in cache; otherwise whole-array NumPy
calls. NaN stays NaN, as through ``np.maximum``.
"""
import numpy as np

from layers import parallel
from layers.relu import BLOCK, flat_pair, mask_blocks


def add_relu(y, s, out):
    """out = max(y + s, 0); returns out."""
    first, second = flat_pair(y, out), flat_pair(s, out)
    if first is None or second is None:
        np.add(y, s, out=out)
        return np.maximum(out, 0, out=out)
    (yf, of), (sf, _) = first, second

    def run(start, stop, worker):
        for b0 in range(start, stop, BLOCK):
            block = of[b0:min(b0 + BLOCK, stop)]
            np.add(yf[b0:b0 + block.size], sf[b0:b0 + block.size], out=block)
            np.maximum(block, 0, out=block)
    parallel.split_work(np, of.size, run, out.nbytes)
    return out


def mask_and_copy(layer, dy, out, copy):
    """dy *= (out > 0) in place, and copy = dy (masks: ``layer``'s workspaces)."""
    first, second = flat_pair(dy, out), flat_pair(copy, out)
    if first is None or second is None:
        dy *= out > 0
        copy[...] = dy
        return
    (df, of), (cf, _) = first, second
    parallel.split_work(np, df.size, lambda start, stop, worker: mask_blocks(
        layer, df, of, start, stop, worker, cf), dy.nbytes)
