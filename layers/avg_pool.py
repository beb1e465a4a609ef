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
from layers import avg_pool_cpu, avg_pool_gpu
from layers.pool import Pool2D


class AvgPool2D(Pool2D):
    """Average pooling, NCHW, Caffe geometry and divisor (see the module docstring)."""

    cpu_route, gpu_route = avg_pool_cpu, avg_pool_gpu

    def __init__(self, ksize, stride, pad=0, ceil_mode=True):
        super().__init__(ksize, stride, pad, ceil_mode)
        self._zeroed = None   # CPU: (workspace, H, W) last zeroed: its border is 0
