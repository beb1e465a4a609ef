"""Average pooling with Caffe's geometry and divisor:

    y[n, c, oh, ow] = sum over the window's real pixels of x / pool_size,
    pool_size = (min(hs + k, H + pad) - hs) * (min(ws + k, W + pad) - ws),  hs = oh*s - pad,

i.e. padding counts as zeros that are included in the divisor, but the part of a ceil-mode
window that runs past the padded input is not (Caffe's AVE pooling). Output size as in
:func:`layers.window.pool_out_size`. Backward: every pixel of a window gets dy / pool_size.

Routes: ``layers/avg_pool_cpu.py`` (NumPy: k*k strided slice adds over a zero-padded
workspace) and ``layers/avg_pool_gpu.py`` (``layers/cuda/pool.cu``); ``backend.uses_kernels``
picks one per call.
"""
from layers import avg_pool_cpu, avg_pool_gpu, backend
from layers.backend import array_module
from layers.base import Layer
from layers.window import check_pool_args, pool_geometry


class AvgPool2D(Layer):
    """Average pooling, NCHW, Caffe geometry and divisor (see the module docstring)."""

    def __init__(self, ksize, stride, pad=0, ceil_mode=True):
        super().__init__()
        check_pool_args("AvgPool2D", ksize, stride, pad)
        self.k, self.stride, self.pad, self.ceil_mode = ksize, stride, pad, ceil_mode
        self._zeroed = None   # CPU: (workspace, H, W) last zeroed: its border is 0

    @staticmethod
    def _route(xp):
        """The route module for arrays of ``xp``: avg_pool_gpu (kernels) or avg_pool_cpu."""
        return avg_pool_gpu if backend.uses_kernels(xp) else avg_pool_cpu

    def geometry(self, x_shape):
        """(OH, OW, Hp, Wp) for an input of ``x_shape``: the output size and a padded size that
        holds every window; an input smaller than a window is an error naming the layer."""
        return pool_geometry(self.name, x_shape, self.k, self.stride, self.pad, self.ceil_mode)

    def forward(self, x, train=True):
        self.check_input(x, 4)
        self.save(None)
        y, saved = self._route(array_module(x)).forward(self, x, train)
        self.save(saved)
        return y

    def backward(self, dy):
        route = self._route(array_module(dy))
        return route.backward(self, self.saved(route.Saved), dy)
