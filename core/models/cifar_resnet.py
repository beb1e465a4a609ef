"""The CIFAR ResNets of He et al. 2016 (section 4.2), depth 6n + 2: conv 3x3 16 -> BN -> ReLU,
three stages of n basic blocks of 16, 32 and 64 channels (the first block of stages 2 and 3
with stride 2), global average pool, fc classes. A basic block is

    y = ReLU(BN(conv3x3 (ReLU(BN(conv3x3/s (x))))) + shortcut(x))

with the parameter-free shortcut of the paper's option A (``layers/pad_shortcut.py``: the input
subsampled and zero-padded to the new channels) where the shape changes. ResNet-20 (n = 3) has
0.27M parameters, ResNet-56 (n = 9) 0.85M, as in the paper's Table 6. ``width`` scales the
channels (for tests).
"""
from core.model import Model
from core.models.resnet import conv_bn
from layers.global_avg_pool import GlobalAvgPool
from layers.linear import Linear
from layers.pad_shortcut import PadShortcut
from layers.relu import ReLU
from layers.residual import Residual
from layers.sequential import Sequential


def basic_block(in_ch, out_ch, stride):
    body = Sequential(conv_bn(in_ch, out_ch, 3, stride, 1), conv_bn(out_ch, out_ch, 3, 1, 1,
                                                                    relu=False))
    shortcut = PadShortcut(in_ch, out_ch, stride) if stride != 1 or in_ch != out_ch else None
    return Sequential(Residual(body, shortcut), ReLU(inplace=True))


def cifar_resnet(in_channels=3, num_classes=10, depth=20, width=1.0, seed=0, **build):
    if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise ValueError(f"cifar_resnet: depth must be 6n + 2 with n >= 1 (20, 32, 44, 56, "
                         f"110, ...), got {depth!r}")
    n, widths = (depth - 2) // 6, [max(2, 2 * int(round(c * width / 2))) for c in (16, 32, 64)]
    layers, ch = [conv_bn(in_channels, widths[0], 3, 1, 1)], widths[0]
    for stage, out in enumerate(widths):
        for i in range(n):
            layers.append(basic_block(ch, out, 2 if stage and not i else 1))
            ch = out
    layers += [GlobalAvgPool(), Linear(ch, num_classes)]
    return Model(f"resnet{depth}", [Sequential(*layers)], seed=seed, **build)


def resnet20(in_channels=3, num_classes=10, width=1.0, seed=0, **build):
    return cifar_resnet(in_channels, num_classes, 20, width, seed, **build)


def resnet56(in_channels=3, num_classes=10, width=1.0, seed=0, **build):
    return cifar_resnet(in_channels, num_classes, 56, width, seed, **build)
