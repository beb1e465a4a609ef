import numpy as np
import pytest

import layers.lrn
from layers.lrn import LRN
from tests.gradient_check import check_backward


def lrn_loops(x, size, alpha, beta, k):
    """Caffe's LRN written out: window of `size` channels centred on c, alpha / size."""
    n, c = x.shape[:2]
    lo = (size - 1) // 2
    y = np.empty(x.shape, dtype=np.float64)
    for b in range(n):
        for ch in range(c):
            acc = np.zeros(x.shape[2:])
            for j in range(ch - lo, ch - lo + size):
                if 0 <= j < c:
                    acc += x[b, j].astype(np.float64) ** 2
            y[b, ch] = x[b, ch] * (k + alpha / size * acc) ** -beta
    return y


CASES = [  # (shape, size, alpha, beta, k)
    ((2, 7, 3, 4), 5, 0.5, 0.75, 1.0),
    ((3, 6, 2, 3), 3, 2.0, 0.6, 2.0),
    ((2, 5, 4, 1), 4, 1.0, 0.75, 0.5),    # even size: one more channel after c than before
    ((1, 2, 3, 3), 5, 1.0, 0.75, 1.0),    # fewer channels than the window
    ((2, 9, 2, 2), 1, 3.0, 1.3, 1.0),
    ((1, 37, 2, 1), 5, 1.0, 0.75, 1.0),   # past two exact re-summations of the window sum
]


@pytest.mark.parametrize("shape,size,alpha,beta,k", CASES)
def test_forward_matches_loops(shape, size, alpha, beta, k):
    x = np.random.default_rng(0).standard_normal(shape) * 2
    np.testing.assert_allclose(LRN(size, alpha, beta, k).forward(x),
                               lrn_loops(x, size, alpha, beta, k), rtol=1e-12, atol=1e-14)


def test_alpha_is_divided_by_size():
    # one channel, x = 2: scale = k + alpha / size * 4 = 1 + 5 / 5 * 4 = 5, y = 2 / 5
    x = np.full((1, 1, 1, 1), 2.0)
    assert LRN(size=5, alpha=5.0, beta=1.0, k=1.0).forward(x)[0, 0, 0, 0] == pytest.approx(0.4)
    assert "alpha is divided by size" in " ".join(LRN.__doc__.split())
    assert "alpha is divided by ``size``" in " ".join(layers.lrn.__doc__.split())


def test_float32_matches_float64_reference_with_default_parameters():
    x = (np.random.default_rng(1).standard_normal((4, 11, 5, 6)) * 30).astype(np.float32)
    y = LRN().forward(x)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, lrn_loops(x, 5, 1e-4, 0.75, 1.0), rtol=2e-6, atol=1e-6)


@pytest.mark.parametrize("shape,size,alpha,beta,k", CASES)
def test_gradient(shape, size, alpha, beta, k):
    x = np.random.default_rng(2).standard_normal(shape)
    check_backward(LRN(size, alpha, beta, k), x)


def test_sample_blocks_give_the_same_result():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((7, 6, 3, 4))
    dy = rng.standard_normal(x.shape)
    whole, blocked = LRN(5, 1.0, 0.75, 1.0), LRN(5, 1.0, 0.75, 1.0)
    blocked.chunk_elems = 30          # 12 elements per sample: blocks of 3, 3 and 1 samples
    chunks = blocked._chunks(x.reshape(7, 6, -1), np)[0]
    assert [len(range(7)[ns]) for ns in chunks] == [3, 3, 1]
    np.testing.assert_allclose(blocked.forward(x), whole.forward(x), rtol=1e-14)
    np.testing.assert_allclose(blocked.backward(dy.copy()), whole.backward(dy.copy()),
                               rtol=1e-12, atol=1e-15)
    check_backward(blocked, x)


def test_running_sum_does_not_keep_the_rounding_of_a_large_channel():
    # channel 0 puts 2e5 into the float32 running sum; whatever rounding it leaves behind is
    # cleared by the exact re-summation at channel `resync`, so later channels stay exact
    rng = np.random.default_rng(6)
    x = rng.uniform(0.5, 1.5, (2, 40, 3, 3)).astype(np.float32)
    x[:, 0] = 1e3
    dy = rng.standard_normal(x.shape).astype(np.float32)
    layer = LRN(5, 1.0, 0.75, 1.0)
    after = slice(layer.resync, None)
    np.testing.assert_allclose(layer.forward(x)[:, after],
                               lrn_loops(x, 5, 1.0, 0.75, 1.0)[:, after], rtol=1e-5)
    ref = LRN(5, 1.0, 0.75, 1.0)
    ref.forward(x.astype(np.float64))
    np.testing.assert_allclose(layer.backward(dy.copy())[:, after],
                               ref.backward(dy.astype(np.float64))[:, after], rtol=1e-4,
                               atol=1e-6)


def test_eval_forward_equals_train_forward_and_backward_needs_train():
    x = np.random.default_rng(4).standard_normal((2, 6, 3, 3)).astype(np.float32)
    layer = LRN(3, 1.0, 0.75, 1.0)
    np.testing.assert_array_equal(layer.forward(x, train=False), layer.forward(x, train=True))
    layer.forward(x, train=False)
    with pytest.raises(RuntimeError, match="LRN"):
        layer.backward(np.ones_like(x))


def test_forward_returns_a_new_array_each_call():
    rng = np.random.default_rng(5)
    layer = LRN(3, 1.0, 0.75, 1.0)
    x1, x2 = rng.standard_normal((2, 2, 5, 3, 3))
    y1 = layer.forward(x1)
    saved = y1.copy()
    layer.forward(x2)
    np.testing.assert_array_equal(y1, saved)


def test_bad_input():
    layer = LRN()
    with pytest.raises(ValueError, match=r"LRN.*\(N, \*, \*, \*\).*\(2, 3, 4\)"):
        layer.forward(np.zeros((2, 3, 4), np.float32))
    with pytest.raises(TypeError, match=r"LRN.*int64"):
        layer.forward(np.zeros((2, 3, 4, 4), np.int64))
    with pytest.raises(ValueError, match="LRN"):
        LRN(size=0)
