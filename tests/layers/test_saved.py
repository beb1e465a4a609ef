"""What a forward keeps for backward (``Layer.save`` / ``Layer.saved``): every layer's backward
before any forward raises a RuntimeError naming the layer, on the CPU and on the kernel route
(before launching anything); the layers that keep nothing after ``forward(x, train=False)``
refuse backward then too; a state saved by one route is refused by the other."""
import importlib
import inspect
import pkgutil

import numpy as np
import pytest

import layers
from layers import backend, cuda
from layers.avg_pool import AvgPool2D
from layers.base import Layer, RoutedLayer
from layers.batch_norm import BatchNorm2D
from layers.concat import Concat
from layers.conv import Conv2D
from layers.dropout import Dropout
from layers.flatten import Flatten
from layers.global_avg_pool import GlobalAvgPool
from layers.linear import Linear
from layers.lrn import LRN
from layers.max_pool import MaxPool2D
from layers.pad_shortcut import PadShortcut
from layers.pool import Pool2D
from layers.relu import ReLU
from layers.residual import Residual
from layers.sequential import Sequential
from layers.softmax_cross_entropy import SoftmaxCrossEntropy
from tests.layers import cuda_on_cpu

# (id, make, input shape, output shape, the layer the error names): every layer class of the
# package, the convolution on each of its routes, containers (whose backward reaches a child
# first).
CASES = [
    ("conv", lambda: Conv2D(3, 4, 3, pad=1), (2, 3, 6, 6), (2, 4, 6, 6), "Conv2D"),
    ("conv output side", lambda: Conv2D(6, 2, 3, pad=1), (2, 6, 6, 6), (2, 2, 6, 6), "Conv2D"),
    ("conv strided", lambda: Conv2D(3, 4, 3, 2, 1), (2, 3, 6, 6), (2, 4, 3, 3), "Conv2D"),
    ("conv 1x1", lambda: Conv2D(3, 4, 1), (2, 3, 6, 6), (2, 4, 6, 6), "Conv2D"),
    ("max pool", lambda: MaxPool2D(3, 2), (2, 3, 6, 6), (2, 3, 3, 3), "MaxPool2D"),
    ("avg pool", lambda: AvgPool2D(3, 2), (2, 3, 6, 6), (2, 3, 3, 3), "AvgPool2D"),
    ("global avg pool", GlobalAvgPool, (2, 3, 6, 6), (2, 3), "GlobalAvgPool"),
    ("relu", ReLU, (2, 3, 6, 6), (2, 3, 6, 6), "ReLU"),
    ("relu in place", lambda: ReLU(inplace=True), (2, 3, 6, 6), (2, 3, 6, 6), "ReLU"),
    ("lrn", LRN, (2, 3, 6, 6), (2, 3, 6, 6), "LRN"),
    ("dropout", lambda: Dropout(0.5, seed=0), (2, 3, 6, 6), (2, 3, 6, 6), "Dropout"),
    ("linear", lambda: Linear(6, 3), (2, 6), (2, 3), "Linear"),
    ("batch norm", lambda: BatchNorm2D(3), (2, 3, 6, 6), (2, 3, 6, 6), "BatchNorm2D"),
    ("batch norm 2-d", lambda: BatchNorm2D(6), (2, 6), (2, 6), "BatchNorm2D"),
    ("flatten", Flatten, (2, 3, 6, 6), (2, 108), "Flatten"),
    ("softmax cross-entropy", SoftmaxCrossEntropy, (2, 6), None, "SoftmaxCrossEntropy"),
    ("concat", lambda: Concat(ReLU(), MaxPool2D(3, 1, 1)), (2, 3, 6, 6), (2, 6, 6, 6),
     "Concat"),
    ("sequential", lambda: Sequential(Conv2D(3, 4, 3, pad=1), ReLU()), (2, 3, 6, 6),
     (2, 4, 6, 6), "ReLU"),
    ("conv grouped", lambda: Conv2D(4, 6, 3, pad=1, groups=2), (2, 4, 6, 6), (2, 6, 6, 6),
     "Conv2D"),
    ("residual", lambda: Residual(Conv2D(3, 3, 3, pad=1)), (2, 3, 6, 6), (2, 3, 6, 6),
     "Residual"),
    ("pad shortcut", lambda: PadShortcut(3, 5, 2), (2, 3, 6, 6), (2, 5, 3, 3), "PadShortcut"),
]
IDS = [case[0] for case in CASES]
# Layers that keep nothing after an evaluation forward (the others keep what an evaluation
# backward needs: BatchNorm's running statistics, dropout's pass-through, ...).
TRAIN_ONLY = ["conv", "conv output side", "conv strided", "conv 1x1", "max pool", "avg pool",
              "global avg pool", "lrn", "conv grouped", "residual", "pad shortcut"]


@pytest.fixture(params=["cpu", "kernels"])
def route(request, monkeypatch):
    """Run on the CPU route, or on the kernel route with the kernels built for the CPU."""
    if request.param == "kernels":
        cuda_on_cpu.compiler()
        monkeypatch.setattr(backend, "uses_kernels", lambda xp: True)
        monkeypatch.setattr(cuda, "launch", cuda_on_cpu.launch)
    return request.param


def backward(layer, dy_shape):
    """layer.backward with a gradient of ``dy_shape`` (None: the loss, whose backward takes a
    scale)."""
    if dy_shape is None:
        return layer.backward(1.0)
    return layer.backward(np.ones(dy_shape, np.float32))


def forward(layer, x, train):
    if isinstance(layer, SoftmaxCrossEntropy):
        return layer.forward(x, np.zeros(x.shape[0], np.int64), train=train)
    return layer.forward(x, train=train)


def test_every_layer_class_has_a_case():
    classes = set()
    for info in pkgutil.iter_modules(layers.__path__):
        module = importlib.import_module(f"layers.{info.name}")
        classes |= {obj for _, obj in inspect.getmembers(module, inspect.isclass)
                    if issubclass(obj, Layer) and obj.__module__ == module.__name__}
    bases = {Layer, RoutedLayer, Pool2D}          # no layer of their own: their subclasses are
    covered = {type(make()) for _, make, _, _, _ in CASES}
    assert classes - covered - bases == set() and bases <= classes


@pytest.mark.parametrize("name, make, shape, dy_shape, named", CASES, ids=IDS)
def test_backward_before_forward_names_the_layer(name, make, shape, dy_shape, named, route,
                                                 monkeypatch):
    layer = make().build(np.float32)
    monkeypatch.setattr(cuda, "launch", lambda *args: pytest.fail("launched a kernel"))
    with pytest.raises(RuntimeError, match=rf"^{named}: backward needs a forward\(x, "
                                           rf"train=True\) first"):
        backward(layer, dy_shape)


@pytest.mark.parametrize("name, make, shape, dy_shape, named",
                         [case for case in CASES if case[0] in TRAIN_ONLY], ids=TRAIN_ONLY)
def test_backward_after_an_evaluation_forward_names_the_layer(name, make, shape, dy_shape,
                                                              named, route):
    layer = make().build(np.float32)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    forward(layer, x, train=True)
    assert forward(layer, x, train=False).shape == dy_shape   # forgets what training kept
    with pytest.raises(RuntimeError, match=rf"^{named}: backward needs a forward"):
        backward(layer, dy_shape)


@pytest.mark.parametrize("name, make, shape, dy_shape, named", CASES, ids=IDS)
def test_backward_after_a_training_forward_runs(name, make, shape, dy_shape, named, route):
    layer = make().build(np.float32)
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    y = forward(layer, x, train=True)
    assert dy_shape is None or y.shape == dy_shape
    assert backward(layer, dy_shape).shape == x.shape


@pytest.mark.parametrize("make, shape", [(lambda: Conv2D(3, 4, 3, pad=1), (2, 3, 6, 6)),
                                         (lambda: MaxPool2D(3, 2), (2, 3, 6, 6)),
                                         (lambda: BatchNorm2D(3), (2, 3, 6, 6))],
                         ids=["conv", "max pool", "batch norm"])
def test_a_state_from_the_other_route_is_refused(make, shape, monkeypatch):
    layer = make().build(np.float32)
    y = layer.forward(np.ones(shape, np.float32))
    monkeypatch.setattr(backend, "uses_kernels", lambda xp: True)
    monkeypatch.setattr(cuda, "launch", lambda *args: pytest.fail("launched a kernel"))
    with pytest.raises(RuntimeError, match=rf"^{layer.name}: backward expected the state .*_gpu "
                                           rf"saves, got .*_cpu\.Saved"):
        layer.backward(np.ones(y.shape, np.float32))


def test_the_kernel_route_conv_columns_are_made_again_in_backward(monkeypatch):
    """On the kernel route every convolution shares one column buffer, which the next layer's
    forward overwrites: backward makes its columns again, so gradients are right whatever ran
    in between, and a second backward gives the first one's gradients."""
    rng = np.random.default_rng(3)
    x, dy = rng.standard_normal((2, 3, 5, 5)), rng.standard_normal((2, 4, 5, 5))
    cpu = Conv2D(3, 4, 3, pad=1).build(np.float64, seed=2)
    cpu.forward(x)
    expected = cpu.backward(dy.copy()), cpu.grads["W"].copy()
    cuda_on_cpu.compiler()
    monkeypatch.setattr(backend, "uses_kernels", lambda xp: True)
    monkeypatch.setattr(cuda, "launch", cuda_on_cpu.launch)
    first, other = (Conv2D(3, 4, 3, pad=1).build(np.float64, seed=2) for _ in range(2))
    first.forward(x)
    other.forward(rng.standard_normal((2, 3, 7, 7)))   # overwrites the shared columns
    for _ in range(2):
        dx = first.backward(dy.copy())
        np.testing.assert_allclose(dx, expected[0], rtol=1e-12)
        np.testing.assert_allclose(first.grads["W"], expected[1], rtol=1e-12)
