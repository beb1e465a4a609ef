"""ReLU: y = max(x, 0); dx = dy * (y > 0)."""
from layers.base import Layer, get_array_module


class ReLU(Layer):
    def forward(self, x, train=True):
        xp = get_array_module(x)
        self.y = xp.maximum(x, 0)
        return self.y

    def backward(self, dy):
        dy *= self.y > 0
        return dy
