"""GoogLeNet, Szegedy et al. 2014 ("Going deeper with convolutions", Table 1), 224x224 input,
with LRN as in the paper and the Caffe model, dropout 0.4 before the classifier and the two
auxiliary classifiers (after inception 4a and 4d; avg pool 5x5/3 -> conv 1x1 128 -> fc 1024 ->
dropout 0.7 -> fc), whose losses are added with weight 0.3 during training.
"""
import itertools
import math

from core.model import Head, Model
from layers.avg_pool import AvgPool2D
from layers.dropout import Dropout
from layers.flatten import Flatten
from layers.global_avg_pool import GlobalAvgPool
from layers.inception import ConvReLU, Inception
from layers.linear import Linear
from layers.lrn import LRN
from layers.max_pool import MaxPool2D
from layers.relu import ReLU
from layers.sequential import Sequential


def size_at_4a(image_size):
    """Spatial size after the stem and two 3x3/2 ceil-mode pools (14 for 224x224 input)."""
    n = (image_size + 2 * 3 - 7) // 2 + 1           # conv 7x7/2, pad 3
    for _ in range(3):
        n = math.ceil((n - 3) / 2) + 1              # max pool 3x3/2, ceil mode
    return n


def aux_head(in_ch, num_classes, image_size, seed):
    n = size_at_4a(image_size)
    if n < 5:
        smallest = next(s for s in itertools.count(image_size) if size_at_4a(s) >= 5)
        raise ValueError(f"googlenet: the auxiliary heads' 5x5 pooling needs image_size >= "
                         f"{smallest} (got {image_size}); set aux_heads: false for smaller "
                         f"images")
    pooled = math.ceil((n - 5) / 3) + 1              # avg pool 5x5/3, ceil mode: 4 at 224
    return Sequential(AvgPool2D(5, 3), ConvReLU(in_ch, 128, 1), Flatten(),
                      Linear(128 * pooled * pooled, 1024), ReLU(), Dropout(0.7, seed=seed),
                      Linear(1024, num_classes))


def googlenet(in_channels=3, num_classes=1000, image_size=224, aux_heads=True,
              aux_weight=0.3, dropout=0.4, seed=0, **build):
    """``image_size`` only sizes the auxiliary heads' first fully connected layer."""
    pool = lambda: MaxPool2D(3, 2, ceil_mode=True)  # noqa: E731
    stem_to_4a = Sequential(
        ConvReLU(in_channels, 64, 7, stride=2, pad=3), pool(), LRN(5, 1e-4, 0.75),
        ConvReLU(64, 64, 1), ConvReLU(64, 192, 3, pad=1), LRN(5, 1e-4, 0.75), pool(),
        Inception(192, 64, 96, 128, 16, 32, 32),      # 3a -> 256
        Inception(256, 128, 128, 192, 32, 96, 64),    # 3b -> 480
        pool(),
        Inception(480, 192, 96, 208, 16, 48, 64))     # 4a -> 512
    to_4d = Sequential(
        Inception(512, 160, 112, 224, 24, 64, 64),    # 4b -> 512
        Inception(512, 128, 128, 256, 24, 64, 64),    # 4c -> 512
        Inception(512, 112, 144, 288, 32, 64, 64))    # 4d -> 528
    to_logits = Sequential(
        Inception(528, 256, 160, 320, 32, 128, 128),  # 4e -> 832
        pool(),
        Inception(832, 256, 160, 320, 32, 128, 128),  # 5a -> 832
        Inception(832, 384, 192, 384, 48, 128, 128),  # 5b -> 1024
        GlobalAvgPool(), Dropout(dropout, seed=seed + 1), Linear(1024, num_classes))
    heads = [Head(0, aux_head(512, num_classes, image_size, seed + 2), aux_weight),
             Head(1, aux_head(528, num_classes, image_size, seed + 3), aux_weight)
             ] if aux_heads else []
    return Model("googlenet", [stem_to_4a, to_4d, to_logits], heads, seed=seed, **build)
