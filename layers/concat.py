"""Branch-and-concat container: y = concat_c(b_1(x), ..., b_k(x)) along channels (axis 1).

Backward splits dy by channels and sums the branches' input gradients:
dx = sum_i b_i.backward(dy[:, c_i:c_i+1]).

The output is channel-major when every branch's is (``layers/layout.py``): each branch's
channels are then one contiguous block of it, and so are the gradient slices handed back. The
concatenation copy and the gradient sum of large arrays are split into sample ranges over
``parallel.workers()`` threads (the same result for any number of workers).
"""
from layers import layout, parallel
from layers.backend import array_module
from layers.base import Layer


class Concat(Layer):
    def __init__(self, *branches):
        super().__init__()
        self.branches = list(branches)

    def children(self):
        return self.branches

    def forward(self, x, train=True):
        xp = array_module(x)
        outs = [branch.forward(x, train) for branch in self.branches]
        splits = [out.shape[1] for out in outs]
        self.save(splits)                              # the branches' channel counts
        y = layout.empty_as(outs[0].shape[:1] + (sum(splits),) + outs[0].shape[2:],
                            xp.result_type(*outs), all(map(layout.is_channel_major, outs)), xp)

        def run(start, stop, worker):
            c0 = 0
            for out, width in zip(outs, splits):
                y[start:stop, c0:c0 + width] = out[start:stop]
                c0 += width
        parallel.split_work(xp, y.shape[0], run, y.nbytes)
        return y

    def backward(self, dy):
        dx, start = None, 0
        for branch, width in zip(self.branches, self.saved()):
            d = branch.backward(dy[:, start:start + width])
            start += width
            if dx is None:
                dx = d if _own(d) else d.copy()      # not a view of dy or of anything kept
            else:
                xp = array_module(dx)

                def run(n0, n1, worker, d=d):
                    dx[n0:n1] += d[n0:n1]
                parallel.split_work(xp, dx.shape[0], run, dx.nbytes)
        return dx


def _own(a):
    """Whether ``a`` holds its own writable memory: no base, or a full reordering (such as a
    channel-major layout, ``layers/layout.py``) of a new array with none."""
    base = a if a.base is None else a.base
    return base.base is None and base.size == a.size and getattr(a.flags, "writeable", True)
