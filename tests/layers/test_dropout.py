import numpy as np
import pytest

from layers.dropout import Dropout
from tests.gradient_check import check_backward


def test_mask_statistics_and_scaling():
    layer = Dropout(0.3, seed=0)
    x = np.ones((200, 500), np.float32)
    y = layer.forward(x)
    assert y.dtype == np.float32 and y.shape == x.shape
    kept = y != 0
    assert abs(kept.mean() - 0.7) < 0.005            # 100000 draws: std of the mean ~0.0015
    np.testing.assert_allclose(y[kept], 1 / 0.7, rtol=1e-6)
    assert abs(y.mean() - 1.0) < 0.01                 # inverted dropout keeps the expectation
    # the mask is not the same across calls
    assert not np.array_equal(layer.forward(x) != 0, kept)


def test_eval_is_identity():
    layer = Dropout(0.5, seed=1)
    x = np.random.default_rng(0).standard_normal((4, 3, 2, 2))
    np.testing.assert_array_equal(layer.forward(x, train=False), x)
    dy = np.random.default_rng(1).standard_normal(x.shape)
    np.testing.assert_array_equal(layer.backward(dy.copy()), dy)


def test_seed_and_reseed_reproduce_the_mask():
    x = np.ones((50, 40))
    a = Dropout(0.5, seed=7).forward(x)
    b = Dropout(0.5, seed=7).forward(x)
    np.testing.assert_array_equal(a, b)
    layer = Dropout(0.5, seed=8)
    c = layer.forward(x)
    assert not np.array_equal(a, c)
    layer.reseed(7)
    np.testing.assert_array_equal(layer.forward(x), a)


def test_backward_uses_the_forward_mask():
    rng = np.random.default_rng(2)
    layer = Dropout(0.4, seed=3)
    x = rng.standard_normal((6, 5, 3, 3)).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    y = layer.forward(x)
    dx = layer.backward(dy.copy())
    np.testing.assert_allclose(dx, np.where(y != 0, dy / 0.6, 0), rtol=1e-6)


@pytest.mark.parametrize("shape", [(3, 4), (2, 3, 4, 5), (5, 7, 1, 3)])
def test_gradient(shape):
    layer = Dropout(0.5)
    x = np.random.default_rng(4).standard_normal(shape)
    check_backward(layer, x, before_forward=lambda: layer.reseed(11))


def test_ratio_zero_keeps_everything():
    x = np.random.default_rng(5).standard_normal((3, 4))
    np.testing.assert_array_equal(Dropout(0.0, seed=0).forward(x), x)


def test_bad_arguments():
    for ratio in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match="Dropout"):
            Dropout(ratio)
    with pytest.raises(TypeError, match=r"Dropout.*int64"):
        Dropout(0.5).forward(np.zeros((2, 3), np.int64))
    with pytest.raises(ValueError, match=r"Dropout.*\(\)"):
        Dropout(0.5).forward(np.float32(1.0))
