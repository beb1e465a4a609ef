"""VGG-16, configuration D of Simonyan & Zisserman 2015 (torchvision's ``vgg16``): thirteen
3x3 convolutions (pad 1) with ReLU in five stages of 64, 128, 256, 512, 512 channels, each
ending in a 2x2/2 max pool, then fc 4096 -> ReLU -> dropout 0.5 -> fc 4096 -> ReLU -> dropout
0.5 -> fc classes. 138,357,544 parameters at 224x224 and 1000 classes (the first fully
connected layer reads the 7x7x512 map; ``image_size`` sizes it, a multiple of 32). ``width``
scales every channel and fully connected width (for tests).
"""
from core.model import Model
from layers.conv import Conv2D
from layers.dropout import Dropout
from layers.flatten import Flatten
from layers.linear import Linear
from layers.max_pool import MaxPool2D
from layers.relu import ReLU
from layers.sequential import Sequential

STAGES = [(64, 2), (128, 2), (256, 3), (512, 3), (512, 3)]   # (channels, convolutions)


def vgg16(in_channels=3, num_classes=1000, image_size=224, width=1.0, dropout=0.5, seed=0,
          **build):
    if image_size % 32 or image_size < 32:
        raise ValueError(f"vgg16: image_size must be a multiple of 32 (five 2x2 pools), got "
                         f"{image_size}")
    layers, ch = [], in_channels
    for channels, convs in STAGES:
        out = max(1, int(round(channels * width)))
        for _ in range(convs):
            layers += [Conv2D(ch, out, 3, pad=1), ReLU(inplace=True)]
            ch = out
        layers.append(MaxPool2D(2, 2))
    fc, side = max(1, int(round(4096 * width))), image_size // 32
    classifier = Sequential(
        Flatten(), Linear(ch * side * side, fc, init="he"), ReLU(), Dropout(dropout, seed=seed),
        Linear(fc, fc, init="he"), ReLU(), Dropout(dropout, seed=seed + 1),
        Linear(fc, num_classes))
    return Model("vgg16", [Sequential(*layers), classifier], seed=seed, **build)
