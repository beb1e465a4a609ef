"""ReLU: y = max(x, 0); dx = dy * (y > 0).

``inplace=True`` overwrites the input with the output (saving a buffer and a memory pass);
use it only where nothing else keeps the input, as after a convolution or BatchNorm, which
keep their own inputs, not their outputs.
"""
from layers.base import Layer, get_array_module


class ReLU(Layer):
    def __init__(self, inplace=False):
        super().__init__()
        self.inplace = inplace

    def forward(self, x, train=True):
        self.check_input(x, max(getattr(x, "ndim", 0), 1))
        xp = get_array_module(x)
        self.y = xp.maximum(x, 0, out=x if self.inplace else None)
        return self.y

    def backward(self, dy):
        dy *= self.y > 0
        return dy
