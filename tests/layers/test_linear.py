import numpy as np
import pytest

from layers.linear import Linear
from tests.gradient_check import check_backward


def test_forward_and_flops():
    layer = Linear(5, 3).build(np.float32, seed=1)
    x = np.random.default_rng(0).standard_normal((4, 5)).astype(np.float32)
    layer.params["b"][...] = [1.0, -2.0, 0.5]
    W, b = layer.params["W"], layer.params["b"]
    assert W.shape == (3, 5)
    y = layer.forward(x)
    assert y.dtype == np.float32
    expect = np.array([[sum(x[n, i] * W[o, i] for i in range(5)) + b[o] for o in range(3)]
                       for n in range(4)])
    np.testing.assert_allclose(y, expect, rtol=1e-5, atol=1e-6)
    assert layer.forward_flops == 2 * 4 * 5 * 3


def test_xavier_init_and_zero_bias():
    layer = Linear(300, 200).build(np.float64, seed=0)
    limit = np.sqrt(6 / 500)
    W = layer.params["W"]
    assert np.abs(W).max() <= limit and np.abs(W).max() > 0.95 * limit
    assert abs(W.std() - limit / np.sqrt(3)) < 0.01 * limit
    np.testing.assert_array_equal(layer.params["b"], 0)
    he = Linear(300, 200, init="he").build(np.float64, seed=0)
    assert abs(he.params["W"].std() - np.sqrt(2 / 300)) < 0.02 * np.sqrt(2 / 300)


@pytest.mark.parametrize("n,fin,fout,bias", [(3, 5, 4, True), (1, 7, 2, True), (4, 3, 6, False)])
def test_gradient(n, fin, fout, bias):
    layer = Linear(fin, fout, bias=bias).build(np.float64, seed=2)
    if bias:
        layer.params["b"][...] = np.random.default_rng(3).standard_normal(fout)
    check_backward(layer, np.random.default_rng(4).standard_normal((n, fin)))


def test_no_bias_has_only_W():
    layer = Linear(4, 2, bias=False).build(np.float64)
    assert list(layer.params) == ["W"]
    x = np.random.default_rng(5).standard_normal((3, 4))
    np.testing.assert_allclose(layer.forward(x), x @ layer.params["W"].T)


def test_gradients_are_overwritten():
    rng = np.random.default_rng(6)
    layer = Linear(4, 3).build(np.float64, seed=0)
    x, dy = rng.standard_normal((5, 4)), rng.standard_normal((5, 3))
    layer.forward(x)
    dx = layer.backward(dy.copy())
    layer.forward(x)
    layer.backward(dy.copy())
    np.testing.assert_allclose(layer.grads["W"], dy.T @ x)
    np.testing.assert_allclose(layer.grads["b"], dy.sum(axis=0))
    np.testing.assert_allclose(dx, dy @ layer.params["W"])


def test_bad_input():
    layer = Linear(5, 3).build(np.float32)
    with pytest.raises(ValueError, match=r"Linear.*\(N, 5\).*\(4, 6\)"):
        layer.forward(np.zeros((4, 6), np.float32))
    with pytest.raises(ValueError, match=r"Linear.*\(N, 5\).*\(4, 5, 1, 1\)"):
        layer.forward(np.zeros((4, 5, 1, 1), np.float32))
    with pytest.raises(TypeError, match=r"Linear.*float64.*float32.*\(4, 5\)"):
        layer.forward(np.zeros((4, 5), np.float64))
