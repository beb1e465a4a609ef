"""Sequential container: y = f_n(... f_1(x)); backward runs the chain in reverse.

A convolution or a BatchNorm followed by an in-place ReLU rectifies for it (``relu.fuse``).
"""
from layers.base import Layer
from layers.relu import fuse


class Sequential(Layer):
    def __init__(self, *layers):
        super().__init__()
        self.layers = list(layers)
        for before, after in zip(self.layers, self.layers[1:]):
            fuse(before, after)

    def children(self):
        return self.layers

    def forward(self, x, train=True):
        for layer in self.layers:
            x = layer.forward(x, train)
        return x

    def backward(self, dy):
        for layer in reversed(self.layers):
            dy = layer.backward(dy)
        return dy
