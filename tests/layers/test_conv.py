import numpy as np
import pytest

from layers.conv import Conv2D, col2im, conv_out_size, im2col
from tests.gradient_check import check_backward

# (N, C, H, W, O, k, stride, pad): stride 2, padding, odd sizes, 1x1, 5x5, pad >= k // 2,
# windows that do not tile the input (the last rows/columns are never read), pad > k - 1.
SHAPES = [
    (2, 3, 7, 7, 4, 3, 1, 1),
    (2, 2, 8, 8, 3, 3, 2, 1),
    (1, 3, 9, 9, 2, 3, 2, 0),
    (2, 3, 5, 5, 4, 1, 1, 0),
    (2, 2, 6, 6, 3, 1, 2, 0),
    (1, 2, 7, 7, 3, 5, 1, 2),
    (2, 2, 6, 7, 2, 3, 1, 0),
    (1, 2, 7, 5, 3, 4, 3, 1),
    (2, 1, 4, 4, 2, 3, 1, 3),
    (1, 3, 11, 11, 2, 7, 2, 3),
]


def conv_loops(x, W, b, stride, pad):
    """Direct definition: y[n,o,i,j] = b[o] + sum_{c,u,v} W[o,c,u,v] xpad[n,c,i*s+u,j*s+v]."""
    n, c, h, w = x.shape
    o, _, k, _ = W.shape
    oh, ow = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    xpad = np.zeros((n, c, h + 2 * pad, w + 2 * pad), dtype=np.float64)
    xpad[:, :, pad:pad + h, pad:pad + w] = x
    y = np.zeros((n, o, oh, ow))
    for ni in range(n):
        for oi in range(o):
            for i in range(oh):
                for j in range(ow):
                    window = xpad[ni, :, i * stride:i * stride + k, j * stride:j * stride + k]
                    y[ni, oi, i, j] = np.sum(window * W[oi]) + (b[oi] if b is not None else 0)
    return y


def make(c, o, k, s, p, dtype, bias=True, seed=0):
    layer = Conv2D(c, o, k, stride=s, pad=p, bias=bias).build(dtype, seed=seed)
    if bias:
        layer.params["b"][...] = np.random.default_rng(seed + 1).standard_normal(o)
    return layer


@pytest.mark.parametrize("shape", SHAPES)
def test_forward_matches_loops(shape):
    n, c, h, w, o, k, s, p = shape
    x = np.random.default_rng(2).standard_normal((n, c, h, w))
    layer = make(c, o, k, s, p, np.float64)
    y = layer.forward(x)
    ref = conv_loops(x, layer.params["W"], layer.params["b"], s, p)
    assert y.shape == (n, o, conv_out_size(h, k, s, p), conv_out_size(w, k, s, p))
    np.testing.assert_allclose(y, ref, rtol=1e-12, atol=1e-12)
    assert layer.forward_flops == 2 * n * o * c * k * k * y.shape[2] * y.shape[3]


@pytest.mark.parametrize("chunk_bytes", [1, Conv2D.chunk_bytes])
@pytest.mark.parametrize("transposed_dx", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_gradient(shape, chunk_bytes, transposed_dx):
    """Both ways to dx (col2im, or the transposed convolution where stride is 1), with one
    sample per chunk and with the whole batch in one chunk."""
    n, c, h, w, o, k, s, p = shape
    x = np.random.default_rng(3).standard_normal((n, c, h, w))
    layer = make(c, o, k, s, p, np.float64)
    layer.chunk_bytes = chunk_bytes
    layer.transposed_dx_ratio = np.inf if transposed_dx else 0.0
    check_backward(layer, x)


def test_gradient_without_bias():
    x = np.random.default_rng(4).standard_normal((2, 3, 6, 6))
    layer = make(3, 2, 3, 1, 1, np.float64, bias=False)
    assert "b" not in layer.params
    check_backward(layer, x)
    np.testing.assert_allclose(layer.forward(x), conv_loops(x, layer.params["W"], None, 1, 1),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("k,s,p",
                         [(3, 1, 1), (5, 1, 2), (3, 2, 1), (2, 2, 0), (3, 1, 0), (3, 1, 3)])
@pytest.mark.parametrize("contiguous_dx", [True, False])
def test_im2col_matches_windows_and_col2im_is_its_adjoint(k, s, p, contiguous_dx):
    """col rows are tap-major windows of the padded input, and <im2col(x), c> == <x, col2im(c)>
    for random x, c (so backward is exactly the transpose of forward)."""
    rng = np.random.default_rng(5)
    g, c, h, w = 3, 2, 7, 7
    x = rng.standard_normal((c, g, h, w))
    oh, ow = conv_out_size(h, k, s, p), conv_out_size(w, k, s, p)
    col = im2col(x, k, s, p, np.full((k * k * c, g * oh * ow), np.nan))
    xpad = np.zeros((c, g, h + 2 * p, w + 2 * p))
    xpad[:, :, p:p + h, p:p + w] = x
    for i in range(k):
        for j in range(k):
            window = xpad[:, :, i:i + s * (oh - 1) + 1:s, j:j + s * (ow - 1) + 1:s]
            np.testing.assert_array_equal(col.reshape(k, k, c, g, oh, ow)[i, j], window)
    cc = rng.standard_normal(col.shape)
    dx = np.full((g, c, h, w), np.nan).transpose(1, 0, 2, 3) if not contiguous_dx else \
        np.full(x.shape, np.nan)
    col2im(cc.copy(), k, s, p, dx)
    np.testing.assert_allclose(np.sum(col * cc), np.sum(x * dx), rtol=1e-12)


def test_im2col_rejects_a_strided_col():
    col = np.zeros((9 * 2, 2 * 25))[:, :25]
    with pytest.raises(ValueError, match="C-contiguous"):
        im2col(np.zeros((2, 1, 5, 5)), 3, 1, 1, col)


@pytest.mark.parametrize("chunk_bytes", [1, 3 * 19 * 36 * 8, 1 << 30])
@pytest.mark.parametrize("transposed_dx", [False, True])
def test_chunking_and_dx_method_do_not_change_results(chunk_bytes, transposed_dx):
    """One sample per chunk, chunks of 3 that leave a short last chunk, one chunk; dx by col2im
    or by the transposed convolution."""
    rng = np.random.default_rng(6)
    x = rng.standard_normal((7, 2, 6, 6))
    dy = rng.standard_normal((7, 3, 6, 6))
    ref = make(2, 3, 3, 1, 1, np.float64)
    ref.transposed_dx_ratio = 0.0
    y_ref, dx_ref = ref.forward(x), ref.backward(dy.copy())
    layer = make(2, 3, 3, 1, 1, np.float64)
    layer.chunk_bytes = chunk_bytes
    layer.transposed_dx_ratio = np.inf if transposed_dx else 0.0
    np.testing.assert_allclose(layer.forward(x), y_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(layer.backward(dy.copy()), dx_ref, rtol=1e-12, atol=1e-12)
    assert ("dycol" in layer._work) == transposed_dx      # the im2col of dy was used
    for name in ("W", "b"):
        np.testing.assert_allclose(layer.grads[name], ref.grads[name], rtol=1e-12, atol=1e-12)


def test_backward_overwrites_grads_and_recomputes_col():
    """backward reuses the col chunk forward left in the workspace only for that forward's x:
    a second backward (col clobbered by the first) and a backward after a forward on other data
    give the same dx and grads (overwritten, not accumulated)."""
    rng = np.random.default_rng(7)
    x, x2 = rng.standard_normal((3, 2, 5, 5)), rng.standard_normal((3, 2, 5, 5))
    dy = rng.standard_normal((3, 4, 3, 3))
    for chunk_bytes in (1, 1 << 30):
        layer = make(2, 4, 3, 2, 1, np.float64)
        layer.chunk_bytes = chunk_bytes
        layer.forward(x)
        dx1, dw1 = layer.backward(dy.copy()), layer.grads["W"].copy()
        dx2 = layer.backward(dy.copy())
        np.testing.assert_array_equal(dx1, dx2)
        np.testing.assert_array_equal(dw1, layer.grads["W"])
        layer.forward(x)
        layer.forward(x2, train=False)
        with pytest.raises(RuntimeError, match="Conv2D.*forward"):
            layer.backward(dy.copy())
        layer.forward(x2)
        layer.forward(x)
        np.testing.assert_array_equal(layer.backward(dy.copy()), dx1)
        np.testing.assert_array_equal(dw1, layer.grads["W"])


def test_forward_returns_new_arrays():
    x = np.random.default_rng(8).standard_normal((2, 2, 5, 5)).astype(np.float32)
    layer = make(2, 3, 3, 1, 1, np.float32)
    y1 = layer.forward(x)
    y1_copy = y1.copy()
    y2 = layer.forward(x * 2)
    assert y1 is not y2 and not np.shares_memory(y1, y2)
    np.testing.assert_array_equal(y1, y1_copy)


@pytest.mark.parametrize("shape", [(4, 16, 14, 14, 24, 3, 1, 1), (4, 16, 14, 14, 8, 3, 1, 1),
                                   (4, 16, 14, 14, 24, 1, 1, 0), (4, 3, 15, 15, 8, 7, 2, 3)])
def test_float32(shape):
    """col2im dx, transposed-convolution dx (O <= C/2), 1x1, and a strided 7x7."""
    n, c, h, w, o, k, s, p = shape
    rng = np.random.default_rng(9)
    x = rng.standard_normal((n, c, h, w))
    dy = rng.standard_normal((n, o, conv_out_size(h, k, s, p), conv_out_size(w, k, s, p)))
    ref = make(c, o, k, s, p, np.float64)
    layer = make(c, o, k, s, p, np.float32)
    y = layer.forward(x.astype(np.float32))
    dx = layer.backward(dy.astype(np.float32))
    assert y.dtype == dx.dtype == layer.grads["W"].dtype == np.float32
    np.testing.assert_allclose(y, ref.forward(x), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dx, ref.backward(dy.copy()), rtol=1e-4, atol=1e-4)
    for name in ("W", "b"):
        np.testing.assert_allclose(layer.grads[name], ref.grads[name], rtol=1e-4, atol=1e-3)


def test_bad_inputs():
    layer = make(3, 4, 3, 1, 1, np.float32)
    with pytest.raises(ValueError, match=r"Conv2D.*\(N, 3, \*, \*\).*\(2, 4, 5, 5\)"):
        layer.forward(np.zeros((2, 4, 5, 5), np.float32))
    with pytest.raises(ValueError, match=r"Conv2D.*\(3, 5, 5\)"):
        layer.forward(np.zeros((3, 5, 5), np.float32))
    with pytest.raises(TypeError, match=r"Conv2D.*float64.*float32.*\(2, 3, 5, 5\)"):
        layer.forward(np.zeros((2, 3, 5, 5), np.float64))
    with pytest.raises(TypeError, match=r"Conv2D.*int64"):
        layer.forward(np.zeros((2, 3, 5, 5), np.int64))
    with pytest.raises(ValueError, match=r"Conv2D.*\(1, 3, 2, 2\).*5x5"):
        make(3, 4, 5, 1, 0, np.float32).forward(np.zeros((1, 3, 2, 2), np.float32))
    with pytest.raises(ValueError, match="Conv2D"):
        Conv2D(3, 4, 0)
    with pytest.raises(ValueError, match="Conv2D"):
        Conv2D(3, 4, 3, stride=0)


def test_init_names_and_shapes():
    layer = Conv2D(8, 16, 3, init="xavier").build(np.float32, seed=1)
    assert layer.params["W"].shape == (16, 8, 3, 3) and layer.params["b"].shape == (16,)
    assert np.all(layer.params["b"] == 0)
    bound = np.sqrt(6.0 / (8 * 9 + 16 * 9))
    assert np.abs(layer.params["W"]).max() <= bound
    he = Conv2D(8, 16, 3).build(np.float64, seed=1)
    assert abs(he.params["W"].std() - np.sqrt(2.0 / 72)) < 0.02
