"""Multilayer perceptron: flatten -> (Linear -> ReLU) x len(hidden) -> Linear."""
from engine.model import Model
from layers.flatten import Flatten
from layers.linear import Linear
from layers.relu import ReLU
from layers.sequential import Sequential


def mlp(in_channels=3, image_size=32, num_classes=10, hidden=(512, 512), **build):
    layers, width = [Flatten()], in_channels * image_size * image_size
    for h in hidden:
        layers += [Linear(width, h, init="he"), ReLU()]
        width = h
    layers.append(Linear(width, num_classes))
    return Model("mlp", [Sequential(*layers)], **build)
