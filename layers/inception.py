"""Inception modules built from Conv2D, pooling and the Concat container.

- ``Inception``: GoogLeNet (Szegedy et al. 2014, "Going deeper with convolutions"), four
  branches 1x1 | 1x1 -> 3x3 | 1x1 -> 5x5 | 3x3 max pool (stride 1) -> 1x1, each conv + ReLU.
- ``ConvBNReLU``, ``InceptionSmall``, ``Downsample``: the CIFAR "Inception (small)" of
  Zhang et al. 2017 ("Understanding deep learning requires rethinking generalization", Fig. 3):
  inception(c1, c3) = concat(conv 1x1 c1, conv 3x3 c3) and downsample(c3) = concat(conv 3x3/2 c3,
  max pool 3x3/2), every conv followed by BatchNorm and ReLU.
"""
from layers.batch_norm import BatchNorm2D
from layers.concat import Concat
from layers.conv import Conv2D
from layers.max_pool import MaxPool2D
from layers.relu import ReLU
from layers.sequential import Sequential


def ConvReLU(in_ch, out_ch, ksize, stride=1, pad=0, init="xavier"):
    return Sequential(Conv2D(in_ch, out_ch, ksize, stride, pad, init=init), ReLU(inplace=True))


def Inception(in_ch, c1, c3r, c3, c5r, c5, pool_proj, init="xavier"):
    """GoogLeNet module; output channels c1 + c3 + c5 + pool_proj."""
    return Concat(
        ConvReLU(in_ch, c1, 1, init=init),
        Sequential(ConvReLU(in_ch, c3r, 1, init=init), ConvReLU(c3r, c3, 3, pad=1, init=init)),
        Sequential(ConvReLU(in_ch, c5r, 1, init=init), ConvReLU(c5r, c5, 5, pad=2, init=init)),
        Sequential(MaxPool2D(3, 1, pad=1), ConvReLU(in_ch, pool_proj, 1, init=init)),
    )


def ConvBNReLU(in_ch, out_ch, ksize, stride=1, pad=0):
    """Conv (no bias: BatchNorm's beta replaces it) -> BatchNorm -> ReLU."""
    return Sequential(Conv2D(in_ch, out_ch, ksize, stride, pad, bias=False),
                      BatchNorm2D(out_ch), ReLU(inplace=True))


def InceptionSmall(in_ch, c1, c3):
    """Output channels c1 + c3, same spatial size."""
    return Concat(ConvBNReLU(in_ch, c1, 1), ConvBNReLU(in_ch, c3, 3, pad=1))


def Downsample(in_ch, c3):
    """Output channels c3 + in_ch, spatial size ceil(H / 2) (both branches padded by 1:
    28 -> 14 -> 7, where the paper's network ends in a 7x7 mean pool)."""
    return Concat(ConvBNReLU(in_ch, c3, 3, stride=2, pad=1),
                  MaxPool2D(3, 2, pad=1, ceil_mode=False))
