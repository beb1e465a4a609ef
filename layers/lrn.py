"""Local response normalization across channels (Krizhevsky et al. 2012), Caffe convention.

    scale[c] = k + (alpha / size) * sum_{j = c - lo}^{c + hi} x[j]^2,    y = x * scale^-beta

NOTE: alpha is divided by ``size`` (as in Caffe and PyTorch's ``LocalResponseNorm``; the
AlexNet paper and TensorFlow's ``local_response_normalization`` use alpha undivided). The window
holds ``size`` channels, lo = (size - 1) // 2 before c and hi = size - 1 - lo after it,
channels outside [0, C) counting as zero. Backward:

    dx[c] = dy[c] * scale[c]^-beta
            - (2 * alpha * beta / size) * x[c] * sum_{j = c - hi}^{c + lo} dy[j] * y[j] / scale[j]

Routes: ``layers/lrn_cpu.py`` (NumPy: running window sums over the channels, cache-sized
blocks of samples, worker threads) and ``layers/lrn_gpu.py`` (``layers/cuda/lrn.cu``);
``backend.uses_kernels`` picks one per call.
"""
import numpy as np

from layers import lrn_cpu, lrn_gpu
from layers.base import RoutedLayer


class LRN(RoutedLayer):
    """LRN(size=5, alpha=1e-4, beta=0.75, k=1.0) across channels, Caffe convention: alpha is
    divided by size, y = x * (k + alpha / size * sum of x^2 over ``size`` channels)^-beta."""

    cpu_route, gpu_route = lrn_cpu, lrn_gpu

    chunk_elems = 1 << 15   # CPU: elements of one channel slice (n samples x H*W) per step
    resync = 16             # CPU: channels between exact re-summations of the running sum

    def __init__(self, size=5, alpha=1e-4, beta=0.75, k=1.0):
        super().__init__()
        if int(size) != size or size < 1:
            raise ValueError(f"LRN: size must be a positive integer, got {size}")
        self.size, self.alpha, self.beta, self.k = int(size), float(alpha), float(beta), float(k)
        self.lo = (self.size - 1) // 2
        self.hi = self.size - 1 - self.lo


    def _chunks(self, x3, xp):
        """Sample ranges whose channel slices (n, H*W) hold about ``chunk_elems`` elements (all
        samples on a GPU), so that the slices of one window stay in the L2 cache."""
        n, _, l = x3.shape
        parts = -(-n * l // self.chunk_elems) if xp is np else 1
        nb = -(-n // parts)
        return [slice(n0, n0 + nb) for n0 in range(0, n, nb)], (nb, l)

