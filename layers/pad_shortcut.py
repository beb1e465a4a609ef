"""The parameter-free shortcut of the CIFAR ResNets (He et al. 2016, option A): the input
subsampled by ``stride`` and its channels zero-padded to ``out_ch``, as many zero channels
before as after (an odd one after):

    y[n, lo + c, h, w] = x[n, c, h * s, w * s],   lo = (out_ch - in_ch) // 2;  0 elsewhere
    dx[n, c, h * s, w * s] = dy[n, lo + c, h, w];  0 elsewhere
"""
from typing import NamedTuple

from layers.backend import array_module
from layers.base import Layer


class Saved(NamedTuple):
    x_shape: tuple
    dtype: object


class PadShortcut(Layer):
    def __init__(self, in_ch, out_ch, stride):
        super().__init__()
        if not 0 < in_ch <= out_ch or stride < 1:
            raise ValueError(f"PadShortcut: need 0 < in_ch <= out_ch and stride >= 1, got "
                             f"in_ch={in_ch}, out_ch={out_ch}, stride={stride}")
        self.in_ch, self.out_ch, self.stride = in_ch, out_ch, stride
        self.lo = (out_ch - in_ch) // 2

    def forward(self, x, train=True):
        self.check_input(x, 4, self.in_ch)
        s, xp = self.stride, array_module(x)
        sub = x[:, :, ::s, ::s]
        y = xp.zeros((x.shape[0], self.out_ch) + sub.shape[2:], x.dtype)
        y[:, self.lo:self.lo + self.in_ch] = sub
        self.save(Saved(x.shape, x.dtype) if train else None)
        return y

    def backward(self, dy):
        saved = self.saved(Saved)
        dx = array_module(dy).zeros(saved.x_shape, dy.dtype)
        dx[:, :, ::self.stride, ::self.stride] = dy[:, self.lo:self.lo + self.in_ch]
        return dx
