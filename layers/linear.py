"""Fully connected layer: y = x W^T + b, with W of shape (out_f, in_f) and x of shape (N, in_f).

Backward: dW = dy^T x, db = sum_n dy, dx = dy W.

On the CPU the products are split over ``parallel.workers()`` threads (BLAS runs one thread
per call there): dW and db by output features; forward and dx by samples, or, where W is larger
than x (a classifier's first layer at a small batch), by the features of W's rows (forward) and
columns (dx), so that the workers read W once between them rather than once each.
"""
from layers import parallel
from layers.backend import array_module
from layers.base import Layer
from layers.initializers import Constant, get


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
        y = xp.empty((x.shape[0], self.out_f), x.dtype)
        w = self.params["W"]

        def rows(n0, n1, worker):
            xp.matmul(x[n0:n1], w.T, out=y[n0:n1])
            if self.bias:
                y[n0:n1] += self.params["b"]

        def features(o0, o1, worker):
            xp.matmul(x, w[o0:o1].T, out=y[:, o0:o1])
            if self.bias:
                y[:, o0:o1] += self.params["b"][o0:o1]
        if self._by_features(x):
            parallel.split_work(xp, self.out_f, features, w.nbytes)
        else:
            parallel.split_work(xp, x.shape[0], rows, w.nbytes)
        self.forward_flops = 2 * x.shape[0] * self.in_f * self.out_f
        return y

    def backward(self, dy):
        x = self.saved()
        xp = array_module(dy)
        w, dw = self.params["W"], self.grads["W"]

        def features(o0, o1, worker):
            xp.matmul(dy[:, o0:o1].T, x, out=dw[o0:o1])
            if self.bias:
                xp.sum(dy[:, o0:o1], axis=0, out=self.grads["b"][o0:o1])
        parallel.split_work(xp, self.out_f, features, w.nbytes)
        if not self.needs_input_grad:
            return None
        dx = xp.empty_like(x)

        def samples(n0, n1, worker):
            xp.matmul(dy[n0:n1], w, out=dx[n0:n1])

        def inputs(i0, i1, worker):
            xp.matmul(dy, w[:, i0:i1], out=dx[:, i0:i1])
        if self._by_features(x):
            parallel.split_work(xp, self.in_f, inputs, w.nbytes)
        else:
            parallel.split_work(xp, x.shape[0], samples, w.nbytes)
        return dx

    def _by_features(self, x):
        """Whether the forward and dx split W's features rather than the samples (above)."""
        return self.params["W"].nbytes > x.nbytes
