import numpy as np
import pytest

from layers.flatten import Flatten
from tests.gradient_check import check_backward


def test_forward_and_backward_shapes():
    x = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    layer = Flatten()
    y = layer.forward(x)
    assert y.shape == (2, 60)
    np.testing.assert_array_equal(y[1], x[1].ravel())
    dy = np.random.default_rng(0).standard_normal((2, 60)).astype(np.float32)
    dx = layer.backward(dy)
    assert dx.shape == x.shape
    np.testing.assert_array_equal(dx.reshape(2, -1), dy)


def test_two_dimensional_input_is_unchanged():
    x = np.random.default_rng(1).standard_normal((3, 7))
    np.testing.assert_array_equal(Flatten().forward(x), x)


@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (3, 1, 1, 1), (2, 5, 3)])
def test_gradient(shape):
    check_backward(Flatten(), np.random.default_rng(2).standard_normal(shape))


def test_bad_input():
    with pytest.raises(ValueError, match=r"Flatten.*\(N, \*\).*\(5,\)"):
        Flatten().forward(np.zeros(5, np.float32))
    with pytest.raises(TypeError, match=r"Flatten.*int32"):
        Flatten().forward(np.zeros((2, 3), np.int32))
