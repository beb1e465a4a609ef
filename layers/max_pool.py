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

from layers import max_pool_cpu, max_pool_gpu
from layers.pool import Pool2D


class MaxPool2D(Pool2D):
    """Max pooling, NCHW, Caffe geometry (``ceil_mode=True`` is Caffe's; False is floor).

    ``chunk_elems`` (class attribute, CPU) bounds the elements of one chunk of planes in
    forward: its s*s polyphase planes plus its running max (so that with the int8 argmax
    scratch a chunk stays within the L2 cache whatever the stride), and the padded size of one
    in backward.
    """

    cpu_route, gpu_route = max_pool_cpu, max_pool_gpu
    chunk_elems = 5 << 16

    def __init__(self, ksize, stride, pad=0, ceil_mode=True):
        super().__init__(ksize, stride, pad, ceil_mode)
        self.idx_dtype = np.int8 if ksize * ksize < 128 else np.int32
        self._filled = {}     # CPU: worker -> (its phase workspace, H, W) last filled with -inf
