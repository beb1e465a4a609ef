"""AlexNet as Caffe's BVLC reference network and Theano-MPI trained it (Krizhevsky et al. 2012):
227x227 input,

    conv 11x11/4 96 -> ReLU -> max pool 3x3/2 -> LRN 5
    conv 5x5 256, 2 groups, pad 2 -> ReLU -> max pool 3x3/2 -> LRN 5
    conv 3x3 384, pad 1 -> ReLU
    conv 3x3 384, 2 groups, pad 1 -> ReLU
    conv 3x3 256, 2 groups, pad 1 -> ReLU -> max pool 3x3/2          (6x6 at 227)
    fc 4096 -> ReLU -> dropout 0.5 -> fc 4096 -> ReLU -> dropout 0.5 -> fc classes

60,965,224 parameters at 1000 classes. The two groups are the two GPUs of the original. LRN
uses Caffe's convention (alpha / size; k = 1). ``width`` scales every channel and fully
connected width (for tests); ``image_size`` sizes fc6.
"""
from core.model import Model
from layers.conv import Conv2D
from layers.dropout import Dropout
from layers.flatten import Flatten
from layers.linear import Linear
from layers.lrn import LRN
from layers.max_pool import MaxPool2D
from layers.relu import ReLU
from layers.sequential import Sequential
from layers.window import conv_out_size, pool_out_size


def _scaled(width, channels, multiple=2):
    """``channels * width``, at least ``multiple`` and a multiple of it (the groups)."""
    return max(multiple, int(round(channels * width / multiple)) * multiple)


def alexnet(in_channels=3, num_classes=1000, image_size=227, width=1.0, dropout=0.5, seed=0,
            **build):
    c1, c2, c3, c4, c5 = (_scaled(width, c) for c in (96, 256, 384, 384, 256))
    fc = _scaled(width, 4096)
    pool = lambda: MaxPool2D(3, 2, ceil_mode=True)  # noqa: E731
    size = pool_out_size(conv_out_size(image_size, 11, 4, 0), 3, 2, 0, True)   # 27
    size = pool_out_size(pool_out_size(size, 3, 2, 0, True), 3, 2, 0, True)    # 13, then 6
    if size < 1:
        raise ValueError(f"alexnet: image_size {image_size} is too small (227 is its own)")
    features = Sequential(
        Conv2D(in_channels, c1, 11, stride=4), ReLU(inplace=True), pool(), LRN(5, 1e-4, 0.75),
        Conv2D(c1, c2, 5, pad=2, groups=2), ReLU(inplace=True), pool(), LRN(5, 1e-4, 0.75),
        Conv2D(c2, c3, 3, pad=1), ReLU(inplace=True),
        Conv2D(c3, c4, 3, pad=1, groups=2), ReLU(inplace=True),
        Conv2D(c4, c5, 3, pad=1, groups=2), ReLU(inplace=True), pool())
    classifier = Sequential(
        Flatten(), Linear(c5 * size * size, fc, init="he"), ReLU(), Dropout(dropout, seed=seed),
        Linear(fc, fc, init="he"), ReLU(), Dropout(dropout, seed=seed + 1),
        Linear(fc, num_classes))
    return Model("alexnet", [features, classifier], seed=seed, **build)
