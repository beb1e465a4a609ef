"""Branch-and-concat container: y = concat_c(b_1(x), ..., b_k(x)) along channels (axis 1).

Backward splits dy by channels and sums the branches' input gradients:
dx = sum_i b_i.backward(dy[:, c_i:c_i+1]).
"""
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
        return xp.concatenate(outs, axis=1)

    def backward(self, dy):
        dx, start = None, 0
        for branch, width in zip(self.branches, self.splits):
            d = branch.backward(dy[:, start:start + width])
            start += width
            if dx is None:
                dx = d if d.flags.writeable and d.base is None else d.copy()
            else:
                dx += d
        return dx
