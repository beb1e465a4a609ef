"""Inception (small), Zhang et al. 2017 ("Understanding deep learning requires rethinking
generalization", appendix Fig. 3), for CIFAR-sized inputs (28x28 crops):

conv 3x3 96 -> inc(32,32) -> inc(32,48) -> down(80) -> inc(112,48) -> inc(96,64) -> inc(80,80)
-> inc(48,96) -> down(96) -> inc(176,160) -> inc(176,160) -> mean pool (7x7 for 28x28 input)
-> fc classes. The downsample modules keep "same" padding: 28 -> 14 -> 7.

``width`` scales every channel count (at least 1 channel per branch), for a narrower network.
"""
from core.model import Model
from layers.global_avg_pool import GlobalAvgPool
from layers.inception import ConvBNReLU, Downsample, InceptionSmall
from layers.linear import Linear
from layers.sequential import Sequential

PLAN = [("inc", 32, 32), ("inc", 32, 48), ("down", 80), ("inc", 112, 48), ("inc", 96, 64),
        ("inc", 80, 80), ("inc", 48, 96), ("down", 96), ("inc", 176, 160), ("inc", 176, 160)]


def inception_small(in_channels=3, num_classes=10, width=1.0, **build):
    if not isinstance(width, (int, float)) or isinstance(width, bool) or not 0 < width <= 16:
        raise ValueError(f"width must be a number in (0, 16], got {width!r}")

    def w(c):
        return max(1, int(round(c * width)))

    ch = w(96)
    layers = [ConvBNReLU(in_channels, ch, 3, pad=1)]
    for kind, *widths in PLAN:
        if kind == "inc":
            c1, c3 = map(w, widths)
            layers.append(InceptionSmall(ch, c1, c3))
            ch = c1 + c3
        else:
            c3 = w(widths[0])
            layers.append(Downsample(ch, c3))
            ch = c3 + ch
    layers += [GlobalAvgPool(), Linear(ch, num_classes)]
    return Model("inception_small", [Sequential(*layers)], **build)
