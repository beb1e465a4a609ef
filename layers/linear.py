"""Fully connected layer: y = x W^T + b, with W of shape (out_f, in_f) and x of shape (N, in_f).

Backward: dW = dy^T x, db = sum_n dy, dx = dy W.
"""
from layers.initializers import Constant, get
from layers.backend import array_module
from layers.base import Layer


class Linear(Layer):
    def __init__(self, in_f, out_f, bias=True, init="xavier"):
        super().__init__()
        self.in_f, self.out_f, self.bias = int(in_f), int(out_f), bool(bias)
        self.param_shapes["W"] = (self.out_f, self.in_f)
        self.initializers["W"] = get(init)
        if self.bias:
            self.param_shapes["b"] = (self.out_f,)
            self.initializers["b"] = Constant(0.0)

    def forward(self, x, train=True):
        self.check_input(x, 2, self.in_f)
        xp = array_module(x)
        self.save(x)
        y = xp.matmul(x, self.params["W"].T)
        if self.bias:
            y += self.params["b"]
        self.forward_flops = 2 * x.shape[0] * self.in_f * self.out_f
        return y

    def backward(self, dy):
        x = self.saved()
        xp = array_module(dy)
        xp.matmul(dy.T, x, out=self.grads["W"])
        if self.bias:
            xp.sum(dy, axis=0, out=self.grads["b"])
        return xp.matmul(dy, self.params["W"]) if self.needs_input_grad else None
