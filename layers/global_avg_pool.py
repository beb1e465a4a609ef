"""Global average pooling: y[n, c] = mean over (h, w) of x[n, c]; dx = dy[n, c] / (H W)."""
from layers import layout
from layers.backend import array_module
from layers.base import Layer


class GlobalAvgPool(Layer):
    """(N, C, H, W) -> (N, C)."""

    def __init__(self):
        super().__init__()
        self.x_shape = None

    def forward(self, x, train=True):
        self.check_input(x, 4)
        self.x_shape = x.shape if train else None
        self.channel_major = layout.is_channel_major(x)
        return x.mean(axis=(2, 3))

    def backward(self, dy):
        if self.x_shape is None:
            raise RuntimeError(f"{self.name}: backward needs a forward(x, train=True) first")
        xp = array_module(dy)
        n, c, h, w = self.x_shape
        dx = layout.empty_as(self.x_shape, dy.dtype, self.channel_major, xp)   # x's layout
        dx[...] = (dy * (1.0 / (h * w)))[:, :, None, None]
        return dx
