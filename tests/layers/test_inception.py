"""The containers and Inception modules: output shapes and float64 gradient checks."""
import numpy as np
import pytest

from layers.base import leaves
from layers.concat import Concat
from layers.inception import ConvBNReLU, Downsample, Inception, InceptionSmall
from layers.relu import ReLU
from layers.sequential import Sequential
from tests.gradient_check import check_backward


def built(layer, seed=0):
    """float64 buffers with random (nonzero) biases, so no ReLU input sits exactly at 0."""
    layer.build(np.float64, seed=seed)
    rng = np.random.default_rng(seed)
    for leaf in leaves([layer]):
        for name, p in leaf.params.items():
            if name == "b":
                p[...] = rng.uniform(0.05, 0.2, size=p.shape)
    return layer


CASES = [
    ("inception_small", lambda: InceptionSmall(5, 3, 4), (2, 5, 7, 7), (2, 7, 7, 7)),
    ("downsample_even", lambda: Downsample(4, 3), (3, 4, 8, 8), (3, 7, 4, 4)),
    ("downsample_odd", lambda: Downsample(4, 3), (2, 4, 7, 7), (2, 7, 4, 4)),
    ("conv_bn_relu", lambda: ConvBNReLU(3, 4, 3, pad=1), (4, 3, 5, 6), (4, 4, 5, 6)),
    ("googlenet_inception", lambda: Inception(6, 2, 3, 4, 2, 3, 2), (2, 6, 6, 6), (2, 11, 6, 6)),
]


@pytest.mark.parametrize("name, make, in_shape, out_shape", CASES, ids=[c[0] for c in CASES])
def test_module_shape_and_gradients(name, make, in_shape, out_shape):
    layer = built(make())
    x = np.random.default_rng(1).standard_normal(in_shape)
    assert layer.forward(x).shape == out_shape
    check_backward(layer, x, elementwise_max=0)


def test_concat_stacks_branches_along_channels_and_sums_their_gradients():
    a, b = Sequential(ReLU()), Sequential(ReLU(), ReLU())
    layer = Concat(a, b)
    x = np.random.default_rng(2).standard_normal((2, 3, 4, 4))
    y = layer.forward(x)
    np.testing.assert_array_equal(y, np.concatenate([np.maximum(x, 0)] * 2, axis=1))
    dy = np.random.default_rng(3).standard_normal(y.shape)
    expected = (dy[:, :3] + dy[:, 3:]) * (x > 0)
    np.testing.assert_allclose(layer.backward(dy.copy()), expected)
