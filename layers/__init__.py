"""Layers with hand-written forward and backward passes (NCHW, NumPy or CuPy arrays)."""
from layers.avg_pool import AvgPool2D
from layers.base import Layer
from layers.batch_norm import BatchNorm2D
from layers.concat import Concat
from layers.conv import Conv2D
from layers.dropout import Dropout
from layers.flatten import Flatten
from layers.global_avg_pool import GlobalAvgPool
from layers.inception import ConvBNReLU, ConvReLU, Downsample, Inception, InceptionSmall
from layers.linear import Linear
from layers.lrn import LRN
from layers.max_pool import MaxPool2D
from layers.relu import ReLU
from layers.sequential import Sequential
from layers.softmax_cross_entropy import SoftmaxCrossEntropy

__all__ = ["AvgPool2D", "BatchNorm2D", "Concat", "Conv2D", "ConvBNReLU", "ConvReLU",
           "Downsample", "Dropout", "Flatten", "GlobalAvgPool", "Inception", "InceptionSmall",
           "LRN", "Layer", "Linear", "MaxPool2D", "ReLU", "Sequential", "SoftmaxCrossEntropy"]
