"""Average pooling with Caffe's geometry and divisor:

    y[n, c, oh, ow] = sum over the window's real pixels of x / pool_size,
    pool_size = (min(hs + k, H + pad) - hs) * (min(ws + k, W + pad) - ws),  hs = oh*s - pad,

i.e. padding counts as zeros that are included in the divisor, but the part of a ceil-mode
window that runs past the padded input is not (Caffe's AVE pooling). Output size as in
:func:`layers.max_pool.pool_out_size`. Backward: every pixel of a window gets dy / pool_size.

CPU method: k*k strided slice adds over a zero-padded workspace (used by GoogLeNet's auxiliary
heads only, so it is kept simple), large inputs split into sample ranges over
``parallel.workers()`` threads.
"""
from layers import backend, cuda, parallel
from layers.backend import array_module
from layers.base import Layer
from layers.max_pool import check_pool_args, pool_geometry, saved_geometry


def _sizes(out, k, stride, pad, size, xp, dtype):
    """Per output index along one axis: the window length clipped to the padded input."""
    start = xp.arange(out) * stride - pad
    return (xp.minimum(start + k, size + pad) - start).astype(dtype)


class AvgPool2D(Layer):
    """Average pooling, NCHW, Caffe geometry and divisor (see the module docstring)."""

    def __init__(self, ksize, stride, pad=0, ceil_mode=True):
        super().__init__()
        check_pool_args("AvgPool2D", ksize, stride, pad)
        self.k, self.stride, self.pad, self.ceil_mode = ksize, stride, pad, ceil_mode
        self.x_shape = None
        self._zeroed = None   # (workspace, H, W) last zeroed: its border is 0

    def _windows(self, a, oh, ow):
        """The k*k strided (N, C, OH, OW) views of the padded array ``a``, one per tap."""
        s = self.stride
        return [a[:, :, i:i + (oh - 1) * s + 1:s, j:j + (ow - 1) * s + 1:s]
                for i in range(self.k) for j in range(self.k)]

    def forward(self, x, train=True):
        self.check_input(x, 4)
        xp = array_module(x)
        n, c, h, w = x.shape
        k, s, p = self.k, self.stride, self.pad
        oh, ow, hp, wp = pool_geometry(self, x)
        self.x_shape = x.shape if train else None
        self.geometry = (oh, ow, hp, wp)
        if backend.uses_kernels(xp):
            y = xp.empty((n, c, oh, ow), dtype=x.dtype)
            cuda.launch("pool", "avg_forward", x.dtype, y.size,
                        (xp.ascontiguousarray(x), y, n * c, h, w, k, s, p, oh, ow))
            return y
        xpad = self.workspace("xpad", (n, c, hp, wp), x.dtype, xp)
        if self._zeroed is None or self._zeroed[0] is not xpad or self._zeroed[1:] != (h, w):
            xpad.fill(0)                       # the interior is overwritten, the border stays
            self._zeroed = (xpad, h, w)
        self.inv_size = 1 / (_sizes(oh, k, s, p, h, xp, x.dtype)[:, None] *
                             _sizes(ow, k, s, p, w, xp, x.dtype))
        y = xp.empty((n, c, oh, ow), dtype=x.dtype)

        def run(start, stop, worker):
            xpad[start:stop, :, p:p + h, p:p + w] = x[start:stop]
            views = self._windows(xpad[start:stop], oh, ow)
            yw = y[start:stop]
            yw[...] = views[0]
            for v in views[1:]:
                yw += v
            yw *= self.inv_size
        parallel.split_work(xp, n, run, x.nbytes)
        return y

    def backward(self, dy):
        (n, c, h, w), (oh, ow, hp, wp) = saved_geometry(self)
        xp = array_module(dy)
        p = self.pad
        if backend.uses_kernels(xp):
            dx = xp.empty(self.x_shape, dtype=dy.dtype)
            cuda.launch("pool", "avg_backward", dy.dtype, dx.size,
                        (xp.ascontiguousarray(dy), dx, n * c, h, w, self.k, self.stride, p,
                         oh, ow))
            return dx
        dpad = self.workspace("dxpad", (n, c, hp, wp), dy.dtype, xp)
        dx = xp.empty(self.x_shape, dtype=dy.dtype)

        def run(start, stop, worker):
            dw, dyw = dpad[start:stop], dy[start:stop]
            dw.fill(0)
            dyw *= self.inv_size
            for v in self._windows(dw, oh, ow):
                v += dyw
            dx[start:stop] = dw[:, :, p:p + h, p:p + w]
        parallel.split_work(xp, n, run, dx.nbytes)
        return dx
