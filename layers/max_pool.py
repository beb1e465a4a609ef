"""Max pooling with Caffe's geometry: y[n, c, oh, ow] = max over the k x k window at
(oh*s - pad, ow*s - pad) of x, where padding (and the part of a ceil-mode window past the input)
counts as -inf. Backward sends dy to the window's argmax (the first in row-major order on ties,
so exactly one input receives it):

    dx[n, c, h, w] = sum over the windows whose argmax is (h, w) of dy[n, c, oh, ow]

Output size (Caffe, ceil mode): ceil((H + 2 pad - k) / s) + 1, minus one if pad > 0 and the last
window would start at or beyond H + pad; floor mode: floor((H + 2 pad - k) / s) + 1
(``window.pool_out_size``).

Routes: ``layers/max_pool_cpu.py`` (NumPy: polyphase planes, running max and argmax tap,
worker threads over planes) and ``layers/max_pool_gpu.py`` (``layers/cuda/pool.cu``);
``backend.uses_kernels`` picks one per call.
"""
import numpy as np

from layers import backend, max_pool_cpu, max_pool_gpu
from layers.backend import array_module
from layers.base import Layer
from layers.window import check_pool_args, pool_geometry


class MaxPool2D(Layer):
    """Max pooling, NCHW, Caffe geometry (``ceil_mode=True`` is Caffe's; False is floor).

    ``chunk_elems`` (class attribute, CPU) bounds the elements of one chunk of planes in
    forward: its s*s polyphase planes plus its running max (so that with the int8 argmax
    scratch a chunk stays within the L2 cache whatever the stride), and the padded size of one
    in backward.
    """

    chunk_elems = 5 << 16

    def __init__(self, ksize, stride, pad=0, ceil_mode=True):
        super().__init__()
        check_pool_args("MaxPool2D", ksize, stride, pad)
        self.k, self.stride, self.pad, self.ceil_mode = ksize, stride, pad, ceil_mode
        self.idx_dtype = np.int8 if ksize * ksize < 128 else np.int32
        self._filled = {}     # CPU: worker -> (its phase workspace, H, W) last filled with -inf

    @staticmethod
    def _route(xp):
        """The route module for arrays of ``xp``: max_pool_gpu (kernels) or max_pool_cpu."""
        return max_pool_gpu if backend.uses_kernels(xp) else max_pool_cpu

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
