import numpy as np

from layers.relu import ReLU
from tests.gradient_check import check_backward


def test_relu_forward_matches_definition():
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 5)).astype(np.float32)
    np.testing.assert_array_equal(ReLU().forward(x), np.where(x > 0, x, 0))


def test_relu_gradient():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 5, 4))
    x[np.abs(x) < 1e-3] = 0.5  # keep away from the kink
    check_backward(ReLU(), x)


def test_inplace_relu_overwrites_its_input_with_the_same_result():
    x = np.random.default_rng(2).standard_normal((2, 3, 4, 4))
    expected = ReLU().forward(x.copy())
    y = ReLU(inplace=True).forward(x)
    assert y is x
    np.testing.assert_array_equal(y, expected)


def test_inplace_relu_gradient_after_a_convolution():
    from layers.conv import Conv2D
    from layers.sequential import Sequential
    layer = Sequential(Conv2D(2, 3, 3, pad=1), ReLU(inplace=True)).build(np.float64, seed=4)
    x = np.random.default_rng(5).standard_normal((2, 2, 5, 5))
    check_backward(layer, x, elementwise_max=0)


def test_relu_refuses_integer_input():
    import pytest
    with pytest.raises(TypeError, match="ReLU"):
        ReLU().forward(np.arange(6).reshape(2, 3))
