"""The base of the pooling layers (``MaxPool2D``, ``AvgPool2D``): a k x k window moved by
``stride`` over the input padded by ``pad``, with Caffe's geometry (``window.pool_geometry``;
``ceil_mode=True`` is Caffe's, False is floor)."""
from layers.base import RoutedLayer
from layers.window import check_pool_args, pool_geometry


class Pool2D(RoutedLayer):
    def __init__(self, ksize, stride, pad=0, ceil_mode=True):
        super().__init__()
        check_pool_args(self.name, ksize, stride, pad)
        self.k, self.stride, self.pad, self.ceil_mode = ksize, stride, pad, ceil_mode

    def geometry(self, x_shape):
        """(OH, OW, Hp, Wp) for an input of ``x_shape``: the output size and a padded size that
        holds every window; an input smaller than a window is an error naming the layer."""
        return pool_geometry(self.name, x_shape, self.k, self.stride, self.pad, self.ceil_mode)
