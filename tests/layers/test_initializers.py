import numpy as np
import pytest

from layers import initializers


def fill(init, shape, seed=0):
    array = np.empty(shape)
    init(np.random.default_rng(seed), array)
    return array


def test_he_has_variance_two_over_fan_in():
    w = fill(initializers.He(), (256, 64, 3, 3))
    assert w.var() == pytest.approx(2.0 / (64 * 9), rel=0.03)
    assert abs(w.mean()) < 0.01


def test_xavier_is_uniform_within_the_glorot_bound():
    w = fill(initializers.Xavier(), (300, 200))
    bound = np.sqrt(6.0 / (300 + 200))
    assert w.min() >= -bound and w.max() <= bound
    assert w.var() == pytest.approx(bound ** 2 / 3, rel=0.03)


def test_gaussian_uses_the_given_std_and_constant_fills():
    assert fill(initializers.Gaussian(0.05), (400, 400)).std() == pytest.approx(0.05, rel=0.02)
    assert np.all(fill(initializers.Constant(0.2), (3, 4)) == 0.2)


def test_get_accepts_names_tuples_and_callables():
    assert isinstance(initializers.get("he"), initializers.He)
    assert initializers.get(("gaussian", 0.5)).std == 0.5
    custom = initializers.Constant(1.0)
    assert initializers.get(custom) is custom


def test_same_seed_same_values():
    np.testing.assert_array_equal(fill(initializers.He(), (8, 4), seed=3),
                                  fill(initializers.He(), (8, 4), seed=3))
