import math

import numpy as np
import pytest

from layers.avg_pool import AvgPool2D
from layers.global_avg_pool import GlobalAvgPool
from layers.max_pool import MaxPool2D
from layers.window import pool_out_size
from tests.gradient_check import check_backward

# (N, C, H, W, k, stride, pad): GoogLeNet's 3x3/2 ceil and 3x3/1 pad 1, partial last windows
# (ceil mode), Caffe's dropped last window (pad > 0, start >= H + pad), odd and non-square sizes.
SHAPES = [
    (2, 3, 9, 9, 3, 2, 0),     # 4x4, windows tile exactly
    (2, 2, 8, 8, 3, 2, 0),     # ceil: 4x4, the last window is 2 wide
    (1, 3, 7, 7, 3, 1, 1),     # same-size 3x3/1 pad 1
    (2, 2, 6, 5, 3, 2, 1),     # pad and ceil: the last window hangs past H + pad
    (1, 2, 5, 5, 2, 2, 1),     # ceil gives 4, Caffe drops the last (starts at H + pad)
    (1, 2, 14, 14, 5, 3, 0),   # GoogLeNet aux head: 14 -> 4
    (2, 1, 4, 7, 2, 2, 0),
    (1, 2, 3, 3, 3, 1, 2),     # pad 2 with k 3: windows at the border read mostly padding
]


def caffe_windows(size, k, s, p, ceil_mode):
    """[(start, end, clipped_end)] per output along one axis, as Caffe's pooling loops do."""
    out = pool_out_size(size, k, s, p, ceil_mode)
    return [(o * s - p, min(o * s - p + k, size + p), min(o * s - p + k, size)) for o in range(out)]


def max_loops(x, k, s, p, ceil_mode=True):
    n, c, h, w = x.shape
    rows, cols = caffe_windows(h, k, s, p, ceil_mode), caffe_windows(w, k, s, p, ceil_mode)
    y = np.empty((n, c, len(rows), len(cols)), x.dtype)
    for a, (h0, _, h1) in enumerate(rows):
        for b, (w0, _, w1) in enumerate(cols):
            y[:, :, a, b] = x[:, :, max(h0, 0):h1, max(w0, 0):w1].max(axis=(2, 3))
    return y


def avg_loops(x, k, s, p, ceil_mode=True):
    n, c, h, w = x.shape
    rows, cols = caffe_windows(h, k, s, p, ceil_mode), caffe_windows(w, k, s, p, ceil_mode)
    y = np.empty((n, c, len(rows), len(cols)), x.dtype)
    for a, (h0, hpad, h1) in enumerate(rows):
        for b, (w0, wpad, w1) in enumerate(cols):
            size = (hpad - h0) * (wpad - w0)
            y[:, :, a, b] = x[:, :, max(h0, 0):h1, max(w0, 0):w1].sum(axis=(2, 3)) / size
    return y


def distinct(shape, seed):
    """Values with no ties: a random permutation of 0..size-1, scaled so gaps >> eps."""
    rng = np.random.default_rng(seed)
    return rng.permutation(math.prod(shape)).reshape(shape).astype(np.float64) * 0.1 - 3.0


def test_pool_out_size_caffe_rule():
    assert pool_out_size(112, 3, 2, 0) == 56            # GoogLeNet pool1
    assert pool_out_size(56, 3, 2, 0) == 28
    assert pool_out_size(14, 3, 2, 0) == 7
    assert pool_out_size(28, 3, 1, 1) == 28
    assert pool_out_size(14, 5, 3, 0) == 4              # aux heads
    assert pool_out_size(8, 3, 2, 0) == 4               # ceil; floor would give 3
    assert pool_out_size(8, 3, 2, 0, ceil_mode=False) == 3
    assert pool_out_size(5, 2, 2, 1) == 3               # ceil gives 4; (4-1)*2 >= 5+1: dropped


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("ceil_mode", [True, False])
def test_max_forward_matches_loops(shape, ceil_mode):
    n, c, h, w, k, s, p = shape
    x = np.random.default_rng(1).standard_normal((n, c, h, w))
    layer = MaxPool2D(k, s, p, ceil_mode=ceil_mode)
    np.testing.assert_array_equal(layer.forward(x), max_loops(x, k, s, p, ceil_mode))
    np.testing.assert_array_equal(layer.forward(x, train=False), max_loops(x, k, s, p, ceil_mode))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("ceil_mode", [True, False])
def test_avg_forward_matches_loops(shape, ceil_mode):
    n, c, h, w, k, s, p = shape
    x = np.random.default_rng(2).standard_normal((n, c, h, w))
    y = AvgPool2D(k, s, p, ceil_mode=ceil_mode).forward(x)
    np.testing.assert_allclose(y, avg_loops(x, k, s, p, ceil_mode), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("chunk_elems", [1, 200, MaxPool2D.chunk_elems])
@pytest.mark.parametrize("shape", SHAPES)
def test_max_gradient(shape, chunk_elems):
    """One plane per chunk, chunks that leave a short last one, everything in one chunk."""
    n, c, h, w, k, s, p = shape
    layer = MaxPool2D(k, s, p)
    layer.chunk_elems = chunk_elems
    check_backward(layer, distinct((n, c, h, w), 3))


@pytest.mark.parametrize("shape", SHAPES)
def test_avg_gradient(shape):
    n, c, h, w, k, s, p = shape
    check_backward(AvgPool2D(k, s, p), np.random.default_rng(4).standard_normal((n, c, h, w)))


def test_max_backward_routes_to_argmax_and_one_position_on_ties():
    x = np.zeros((1, 1, 4, 4))
    x[0, 0, 1, 1] = 5.0                        # the max of all four 3x3/1 windows
    layer = MaxPool2D(3, 1)
    y = layer.forward(x)
    np.testing.assert_array_equal(y, np.full((1, 1, 2, 2), 5.0))
    expected = np.zeros_like(x)
    expected[0, 0, 1, 1] = 10.0
    np.testing.assert_array_equal(layer.backward(np.full((1, 1, 2, 2), 2.5)), expected)
    flat = np.ones((2, 3, 5, 5), np.float32)    # all ties: each window's first pixel wins
    layer = MaxPool2D(3, 2)
    dy = np.random.default_rng(5).standard_normal((2, 3, 2, 2)).astype(np.float32)
    layer.forward(flat)
    dx = layer.backward(dy.copy())
    np.testing.assert_allclose(dx.sum(axis=(2, 3)), dy.sum(axis=(2, 3)), rtol=1e-6)
    assert np.count_nonzero(dx) == 2 * 3 * 4
    np.testing.assert_array_equal(dx[:, :, ::2, ::2][:, :, :2, :2], dy)


@pytest.mark.parametrize("cls,loops", [(MaxPool2D, max_loops), (AvgPool2D, avg_loops)])
def test_input_size_change_with_the_same_padded_workspace(cls, loops):
    """9x9 and 8x8 inputs give the same output and padded sizes with 3x3/2 ceil: the row and
    column the 9x9 input wrote must count as padding again for the 8x8 one."""
    rng = np.random.default_rng(8)
    layer = cls(3, 2)
    for size in (9, 8, 9):
        x = rng.standard_normal((2, 3, size, size)) + 5.0   # the stale pixels would win
        np.testing.assert_allclose(layer.forward(x), loops(x, 3, 2, 0), rtol=1e-12)


def test_max_padding_is_minus_infinity():
    x = -np.arange(1.0, 17.0).reshape(1, 1, 4, 4) - 100    # all negative: zero padding would win
    y = MaxPool2D(3, 1, 1).forward(x)
    assert y.max() < -100
    np.testing.assert_array_equal(y, max_loops(x, 3, 1, 1))


def test_avg_divisor_counts_padding_but_not_ceil_overhang():
    x = np.ones((1, 1, 4, 4))
    y = AvgPool2D(3, 2, 1).forward(x)   # windows start at -1, 1, 3; H + pad = 5
    # window sizes: rows/cols 3, 3, 2 (clipped at H + pad); real pixels 2, 3, 1
    real, size = np.array([2, 3, 1]), np.array([3, 3, 2])
    np.testing.assert_allclose(y[0, 0], np.outer(real, real) / np.outer(size, size))


@pytest.mark.parametrize("layer", [MaxPool2D(3, 2), MaxPool2D(3, 1, 1), AvgPool2D(5, 3)])
def test_float32_and_forward_returns_new_arrays(layer):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((4, 16, 14, 14))
    y64 = layer.forward(x)
    dy = rng.standard_normal(y64.shape)
    dx64 = layer.backward(dy.copy())
    y = layer.forward(x.astype(np.float32))
    y_copy = y.copy()
    dx = layer.backward(dy.astype(np.float32))
    assert y.dtype == dx.dtype == np.float32
    np.testing.assert_allclose(y, y64, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(dx, dx64, rtol=1e-5, atol=1e-6)
    y2 = layer.forward(x.astype(np.float32) + 1)
    assert not np.shares_memory(y, y2)
    np.testing.assert_array_equal(y, y_copy)


def test_global_avg_pool():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((3, 4, 5, 6))
    layer = GlobalAvgPool()
    y = layer.forward(x)
    assert y.shape == (3, 4)
    np.testing.assert_allclose(y, x.mean(axis=(2, 3)), rtol=1e-12)
    check_backward(layer, x)
    check_backward(GlobalAvgPool(), rng.standard_normal((2, 3, 1, 1)))
    assert layer.forward(x.astype(np.float32)).dtype == np.float32


@pytest.mark.parametrize("make", [lambda: MaxPool2D(3, 2), lambda: AvgPool2D(3, 2), GlobalAvgPool])
def test_bad_inputs(make):
    layer = make()
    name = layer.name
    with pytest.raises(ValueError, match=rf"{name}.*\(N, \*, \*, \*\).*\(3, 9, 9\)"):
        layer.forward(np.zeros((3, 9, 9), np.float32))
    with pytest.raises(TypeError, match=rf"{name}.*int32"):
        layer.forward(np.zeros((1, 3, 9, 9), np.int32))
    with pytest.raises(RuntimeError, match=rf"{name}.*forward"):
        make().backward(np.zeros((1, 3, 4, 4), np.float32))
    y = layer.forward(np.zeros((1, 3, 9, 9), np.float32), train=False)
    with pytest.raises(RuntimeError, match=rf"{name}.*forward"):
        layer.backward(y)


@pytest.mark.parametrize("cls", [MaxPool2D, AvgPool2D])
def test_bad_geometry(cls):
    with pytest.raises(ValueError, match=rf"{cls.__name__}.*\(1, 2, 2, 2\).*3x3"):
        cls(3, 1).forward(np.zeros((1, 2, 2, 2), np.float32))
    for args in [(0, 1), (3, 0), (3, 1, 3), (3, 1, -1), (3.0, 2)]:
        with pytest.raises(ValueError, match=cls.__name__):
            cls(*args)


def test_max_tie_across_rows_goes_to_the_first_in_row_order():
    """A tie between (0, 2) and (1, 0) of one window: only (0, 2) receives the gradient."""
    x = np.zeros((3, 2, 3, 3))
    x[:, :, 0, 2] = x[:, :, 1, 0] = 4.0
    layer = MaxPool2D(3, 2)
    np.testing.assert_array_equal(layer.forward(x), np.full((3, 2, 1, 1), 4.0))
    dx = layer.backward(np.full((3, 2, 1, 1), 1.5))
    expected = np.zeros_like(x)
    expected[:, :, 0, 2] = 1.5
    np.testing.assert_array_equal(dx, expected)


@pytest.mark.parametrize("layout_", ["C order", "channel-major"])
@pytest.mark.parametrize("shape", SHAPES)
def test_max_backward_in_c_equals_the_numpy_route(shape, layout_, monkeypatch):
    """layers/c/max_pool.c against np.add.at, bit for bit: ties (values drawn from 3), overlapping
    windows, padding, a plane of -inf (every window's argmax at tap 0, padding where pad > 0),
    both layouts, float32."""
    from layers import c as ckernels, layout, max_pool_c
    if not ckernels.enabled():
        pytest.skip("PT_C_KERNELS=0: the C kernels are off")
    n, c, h, w, k, s, p = shape
    x = np.random.default_rng(8).integers(0, 3, (n, c, h, w)).astype(np.float32)
    x[0, 0] = -np.inf
    if layout_ == "channel-major":
        x = layout.to_channel_major(x)
    results = []
    for c_pass in (True, False):
        monkeypatch.setattr(max_pool_c, "takes", lambda layer, dtype, on=c_pass:
                            on and max_pool_c.library(dtype) is not None)
        layer = MaxPool2D(k, s, p)
        assert max_pool_c.takes(layer, x.dtype) == c_pass, ckernels.status(x.dtype)
        y = layer.forward(x.copy(order="K"))
        dy = np.random.default_rng(9).standard_normal(y.shape).astype(np.float32)
        results.append(layer.backward(dy))
    np.testing.assert_array_equal(*results)
    assert layout.is_channel_major(results[0]) == layout.is_channel_major(x)
