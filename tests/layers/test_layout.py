"""Channel-major activations (layers/layout.py): the helpers, and every CPU layer giving the same
results for C-order and channel-major inputs and gradients, while keeping (or producing) the
channel-major layout."""
import numpy as np
import pytest

from layers import layout
from layers.avg_pool import AvgPool2D
from layers.batch_norm import BatchNorm2D
from layers.conv import Conv2D
from layers.global_avg_pool import GlobalAvgPool
from layers.inception import Downsample, Inception, InceptionSmall
from layers.lrn import LRN
from layers.max_pool import MaxPool2D
from layers.relu import ReLU


def test_channel_major_arrays_and_their_views():
    a = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    cm = layout.to_channel_major(a)
    assert not layout.is_channel_major(a) and layout.is_channel_major(cm)
    assert layout.to_channel_major(cm) is cm
    np.testing.assert_array_equal(cm, a)
    assert cm.transpose(1, 0, 2, 3).flags.c_contiguous
    r = layout.rows(cm)
    assert r.shape == (3, 40) and np.shares_memory(r, cm)
    np.testing.assert_array_equal(r[1], a[:, 1].ravel())
    p = layout.planes(cm)
    assert p.shape == (6, 4, 5) and np.shares_memory(p, cm)
    np.testing.assert_array_equal(p[1], a[1, 0])          # plane (c=0, n=1)
    np.testing.assert_array_equal(layout.planes(a)[1], a[0, 1])
    assert layout.planes(a[:, 1:]) is None
    e = layout.empty((2, 3, 4, 5), np.float64)
    assert e.shape == (2, 3, 4, 5) and layout.is_channel_major(e) and e.dtype == np.float64
    assert layout.is_channel_major(layout.empty_as((2, 3), np.float32, True))
    assert layout.empty_as((2, 3, 4, 5), np.float32, False).flags.c_contiguous


def test_dense_views_follow_memory_order():
    a = np.arange(24.0).reshape(2, 3, 4)
    np.testing.assert_array_equal(layout.dense(a), np.arange(24.0))
    t = a.transpose(2, 0, 1)
    assert np.shares_memory(layout.dense(t), a)
    np.testing.assert_array_equal(layout.dense(t), np.arange(24.0))   # memory, not index, order
    cm = layout.to_channel_major(np.zeros((4, 6, 2, 2)))
    assert layout.dense(cm[:, 2:4]).shape == (32,)           # a channel range: one block
    assert layout.dense(a[:, 1:]) is None
    assert layout.dense(a[:, :, ::2]) is None


def _both_layouts(make, shape, seed=0):
    """Forward, dx and gradients of two copies of a layer: one fed C-order x and dy, one fed
    channel-major copies of them; returns both results and the second's output."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    results = []
    for arrange in (np.ascontiguousarray, layout.to_channel_major):
        layer = make().build(np.float64, seed=1)
        y = layer.forward(arrange(x.copy()))
        dy = np.random.default_rng(seed + 1).standard_normal(y.shape)
        dx = layer.backward(arrange(dy))
        results.append([y.copy(), dx.copy()] + [g.copy() for g in layer.grads.values()])
        out = (y, dx)
    return results, out


LAYERS = [
    ("conv input side", lambda: Conv2D(3, 4, 3, 1, 1), (3, 3, 6, 6)),
    ("conv output side", lambda: Conv2D(6, 4, 3, 1, 1), (3, 6, 6, 6)),
    ("conv strided", lambda: Conv2D(4, 5, 3, 2, 1), (3, 4, 8, 8)),
    ("conv 1x1", lambda: Conv2D(5, 3, 1), (3, 5, 4, 4)),
    ("batch norm", lambda: BatchNorm2D(4), (3, 4, 5, 5)),
    ("relu", ReLU, (3, 4, 5, 5)),
    ("max pool", lambda: MaxPool2D(3, 2, 1), (3, 4, 7, 7)),
    ("lrn", LRN, (3, 6, 4, 4)),
    ("inception small", lambda: InceptionSmall(4, 3, 5), (3, 4, 6, 6)),
    ("downsample", lambda: Downsample(4, 3), (3, 4, 6, 6)),
    ("inception", lambda: Inception(4, 2, 2, 3, 2, 3, 2), (2, 4, 5, 5)),
]


@pytest.mark.parametrize("name, make, shape", LAYERS, ids=[n for n, _, _ in LAYERS])
def test_layers_give_the_same_results_in_either_layout_and_keep_channel_major(name, make,
                                                                              shape):
    (c_order, channel_major), (y, dx) = _both_layouts(make, shape)
    for a, b in zip(c_order, channel_major):
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-12)
    assert layout.is_channel_major(y) and layout.is_channel_major(dx), name


def test_convolutions_write_channel_major_from_c_order_input():
    x = np.random.default_rng(2).standard_normal((2, 3, 5, 5))
    for layer in (Conv2D(3, 4, 3, 1, 1), Conv2D(3, 4, 1)):
        layer.build(np.float64)
        y = layer.forward(x)
        assert layout.is_channel_major(y)
        assert layout.is_channel_major(layer.backward(np.ones(y.shape)))


def test_pooling_heads_return_gradients_in_their_input_layout():
    x = layout.to_channel_major(np.random.default_rng(3).standard_normal((2, 3, 4, 4)))
    pool = GlobalAvgPool()
    pool.forward(x)
    assert layout.is_channel_major(pool.backward(np.ones((2, 3))))
    avg = AvgPool2D(3, 1, 1)                 # C-order output, any input
    y = avg.forward(x)
    np.testing.assert_allclose(y, AvgPool2D(3, 1, 1).forward(np.ascontiguousarray(x)))
