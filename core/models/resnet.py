"""ResNet-50 in torchvision's layout (He et al. 2016, "v1.5": the stride on each bottleneck's
3x3): conv 7x7/2 64 -> BN -> ReLU -> max pool 3x3/2 pad 1, then four stages of 3, 4, 6, 3
bottlenecks of width 64, 128, 256, 512 (the first of stages 2-4 with stride 2), global average
pool, fc classes. A bottleneck is

    y = ReLU(BN(conv1x1 4w (ReLU(BN(conv3x3/s w (ReLU(BN(conv1x1 w (x))))))) + shortcut(x))

with the identity as shortcut, or conv 1x1/s 4w -> BN where the shape changes. 25,557,032
parameters at 1000 classes. ``zero_init_residual`` starts each block's last BatchNorm scale at
0 (Goyal et al. 2017: every block begins as the identity). ``width`` scales every width (for
tests).
"""
from core.model import Model
from layers.batch_norm import BatchNorm2D
from layers.conv import Conv2D
from layers.global_avg_pool import GlobalAvgPool
from layers.initializers import Constant
from layers.linear import Linear
from layers.max_pool import MaxPool2D
from layers.relu import ReLU
from layers.residual import Residual
from layers.sequential import Sequential

STAGES = [(64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)]   # (width, blocks, stride)


def conv_bn(in_ch, out_ch, ksize, stride=1, pad=0, relu=True, zero_scale=False):
    """Conv (no bias) -> BatchNorm (scale 0 if ``zero_scale``) [-> ReLU]."""
    bn = BatchNorm2D(out_ch)
    if zero_scale:
        bn.initializers["gamma"] = Constant(0.0)
    layers = [Conv2D(in_ch, out_ch, ksize, stride, pad, bias=False), bn]
    return Sequential(*layers, ReLU(inplace=True)) if relu else Sequential(*layers)


def bottleneck(in_ch, width, stride, zero_init_residual):
    out = 4 * width
    body = Sequential(conv_bn(in_ch, width, 1), conv_bn(width, width, 3, stride, 1),
                      conv_bn(width, out, 1, relu=False, zero_scale=zero_init_residual))
    shortcut = conv_bn(in_ch, out, 1, stride, relu=False) \
        if stride != 1 or in_ch != out else None
    return Sequential(Residual(body, shortcut), ReLU(inplace=True)), out


def resnet50(in_channels=3, num_classes=1000, width=1.0, zero_init_residual=False, seed=0,
             **build):
    stem = max(1, int(round(64 * width)))
    stages, ch = [], stem
    for base, blocks, stride in STAGES:
        for i in range(blocks):
            block, ch = bottleneck(ch, max(1, int(round(base * width))), stride if i == 0 else 1,
                                   zero_init_residual)
            stages.append(block)
    trunk = Sequential(conv_bn(in_channels, stem, 7, 2, 3), MaxPool2D(3, 2, pad=1,
                                                                    ceil_mode=False), *stages,
                       GlobalAvgPool(), Linear(ch, num_classes))
    return Model("resnet50", [trunk], seed=seed, **build)
