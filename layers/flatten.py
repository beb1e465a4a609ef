"""Flatten: (N, d1, d2, ...) -> (N, d1 * d2 * ...); backward reshapes dy back to x's shape."""
from layers.base import Layer


class Flatten(Layer):
    def forward(self, x, train=True):
        self.check_input(x, max(getattr(x, "ndim", 0), 2))
        self.save(x.shape)
        return x.reshape(x.shape[0], -1)

    def backward(self, dy):
        return dy.reshape(self.saved())
