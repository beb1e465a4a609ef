"""Global average pooling: y[n, c] = mean over (h, w) of x[n, c]; dx = dy[n, c] / (H W)."""
from typing import NamedTuple

from layers import layout
from layers.backend import array_module
from layers.base import Layer


class Saved(NamedTuple):
    """What a training forward keeps for backward."""
    x_shape: tuple          # (N, C, H, W)
    channel_major: bool     # x's layout, which dx takes


class GlobalAvgPool(Layer):
    """(N, C, H, W) -> (N, C)."""

    def forward(self, x, train=True):
        self.check_input(x, 4)
        self.save(Saved(x.shape, layout.is_channel_major(x)) if train else None)
        return x.mean(axis=(2, 3))

    def backward(self, dy):
        saved = self.saved(Saved)
        xp = array_module(dy)
        n, c, h, w = saved.x_shape
        dx = layout.empty_as(saved.x_shape, dy.dtype, saved.channel_major, xp)   # x's layout
        dx[...] = (dy * (1.0 / (h * w)))[:, :, None, None]
        return dx
