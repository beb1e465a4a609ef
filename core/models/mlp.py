"""Multilayer perceptron: flatten -> (Linear -> ReLU) x len(hidden) -> Linear."""
from core.model import Model
from layers.flatten import Flatten
from layers.linear import Linear
from layers.relu import ReLU
from layers.sequential import Sequential


def mlp(in_channels=3, image_size=32, num_classes=10, hidden=(512, 512), **build):
    if not isinstance(hidden, (list, tuple)) or len(hidden) > 64 or not all(
            isinstance(h, int) and not isinstance(h, bool) and 1 <= h <= 65536 for h in hidden):
        raise ValueError(f"hidden must be a list of at most 64 layer sizes in [1, 65536], "
                         f"got {hidden!r}")
    layers, width = [Flatten()], in_channels * image_size * image_size
    for h in hidden:
        layers += [Linear(width, h, init="he"), ReLU()]
        width = h
    layers.append(Linear(width, num_classes))
    return Model("mlp", [Sequential(*layers)], **build)
