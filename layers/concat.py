"""Branch-and-concat container: y = concat_c(b_1(x), ..., b_k(x)) along channels (axis 1).

Backward splits dy by channels and sums the branches' input gradients:
dx = sum_i b_i.backward(dy[:, c_i:c_i+1]).

The concatenation copy and the gradient sum of large arrays are split into sample ranges over
``parallel.workers()`` threads (the same result for any number of workers).
"""
from layers import parallel
from layers.base import Layer, get_array_module


class Concat(Layer):
    def __init__(self, *branches):
        super().__init__()
        self.branches = list(branches)

    def children(self):
        return self.branches

    def forward(self, x, train=True):
        xp = get_array_module(x)
        outs = [branch.forward(x, train) for branch in self.branches]
        self.splits = [out.shape[1] for out in outs]
        y = xp.empty(outs[0].shape[:1] + (sum(self.splits),) + outs[0].shape[2:],
                     dtype=xp.result_type(*outs))

        def run(start, stop, worker):
            c0 = 0
            for out, width in zip(outs, self.splits):
                y[start:stop, c0:c0 + width] = out[start:stop]
                c0 += width
        parallel.split_work(xp, y.shape[0], run, y.nbytes)
        return y

    def backward(self, dy):
        dx, start = None, 0
        for branch, width in zip(self.branches, self.splits):
            d = branch.backward(dy[:, start:start + width])
            start += width
            if dx is None:
                dx = d if d.base is None and getattr(d.flags, "writeable", True) else d.copy()
            else:
                def run(n0, n1, worker, d=d):
                    dx[n0:n1] += d[n0:n1]
                parallel.split_work(get_array_module(dx), dx.shape[0], run, dx.nbytes)
        return dx
