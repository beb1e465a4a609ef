import numpy as np
import pytest

from layers import conv_direct, parallel
from layers.conv import Conv2D
from layers.conv_cpu import col2im, im2col
from layers.window import conv_out_size
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
    (2, 2, 12, 10, 3, 7, 2, 3),      # strided, output = input / stride: the polyphase path
    (1, 2, 9, 9, 2, 3, 3, 1),
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


# Output-side route shapes (N, C, H, W, O, k, pad), stride 1: O < C and O > C, k 3 and 5, pad 0
# (output smaller than the input), pad (k-1)/2 ("same": the flat path), pad 1 with k 5, and
# pad > (k-1)/2 (output larger than the input), odd and non-square sizes.
OUTPUT_SIDE = [
    (2, 5, 7, 7, 3, 3, 1),
    (2, 3, 6, 7, 5, 3, 1),
    (1, 4, 9, 7, 2, 5, 2),
    (2, 4, 7, 6, 3, 3, 0),
    (2, 3, 8, 7, 4, 5, 1),
    (1, 3, 6, 5, 2, 3, 2),
    (2, 6, 5, 5, 2, 5, 4),
]
# (forward, backward) output-side ratios: input-side, output-side, and each mixed with the other.
ROUTES = {"input": (0.0, 0.0), "output": (np.inf, np.inf), "output-fwd": (np.inf, 0.0),
          "output-bwd": (0.0, np.inf)}


def make(c, o, k, s, p, dtype, bias=True, seed=0, route=None):
    layer = Conv2D(c, o, k, stride=s, pad=p, bias=bias).build(dtype, seed=seed)
    if bias:
        layer.params["b"][...] = np.random.default_rng(seed + 1).standard_normal(o)
    if route is not None:        # an im2col route (NumPy): not the direct one
        layer.direct = "never"
        layer.output_side_forward, layer.output_side_backward = ROUTES[route]
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
@pytest.mark.parametrize("shape", SHAPES)
def test_gradient(shape, chunk_bytes):
    """The input-side route (im2col of x, col2im for dx), with one sample per chunk and with
    the whole batch in one chunk."""
    n, c, h, w, o, k, s, p = shape
    x = np.random.default_rng(3).standard_normal((n, c, h, w))
    layer = make(c, o, k, s, p, np.float64, route="input")
    layer.chunk_bytes = chunk_bytes
    check_backward(layer, x)
    assert "Wf" not in layer._work


@pytest.mark.parametrize("shape", OUTPUT_SIDE)
def test_output_side_forward_matches_loops(shape):
    n, c, h, w, o, k, p = shape
    x = np.random.default_rng(10).standard_normal((n, c, h, w))
    layer = make(c, o, k, 1, p, np.float64, route="output")
    y = layer.forward(x)
    assert "Wf" in layer._work and ("col", 0) not in layer._work  # no im2col of x
    np.testing.assert_allclose(y, conv_loops(x, layer.params["W"], layer.params["b"], 1, p),
                               rtol=1e-12, atol=1e-12)
    assert layer.forward_flops == 2 * n * o * c * k * k * y.shape[2] * y.shape[3]


@pytest.mark.parametrize("chunk_bytes", [1, Conv2D.chunk_bytes])
@pytest.mark.parametrize("route", ["output", "output-fwd", "output-bwd"])
@pytest.mark.parametrize("shape", OUTPUT_SIDE)
def test_output_side_gradient(shape, route, chunk_bytes):
    """Output-side forward and/or backward, one sample per chunk or the batch in one chunk."""
    n, c, h, w, o, k, p = shape
    x = np.random.default_rng(11).standard_normal((n, c, h, w))
    layer = make(c, o, k, 1, p, np.float64, route=route)
    layer.chunk_bytes = chunk_bytes
    check_backward(layer, x)
    assert (("col", 0) in layer._work) == (route != "output")   # some step took the input side


@pytest.mark.parametrize("shape,forward,backward", [
    ((2, 96, 28, 28, 32, 3, 1, 1), True, True),     # O < C, same padding
    ((2, 64, 28, 28, 64, 3, 1, 1), True, True),     # O = C
    ((2, 64, 28, 28, 96, 3, 1, 1), False, True),    # C < O <= 1.5 C: backward only
    ((2, 64, 28, 28, 128, 3, 1, 1), False, False),
    ((2, 96, 13, 13, 64, 5, 1, 0), False, True),    # 64*13*13 > 96*9*9 (wasted GEMM columns)
    ((2, 96, 13, 13, 80, 5, 1, 0), False, False),   # 80*13*13 > 1.5*96*9*9
    ((2, 96, 13, 13, 48, 3, 1, 0), True, True),     # 48*13*13 <= 96*11*11
    ((2, 96, 28, 28, 32, 3, 2, 1), False, False),   # stride 2
    ((2, 96, 9, 9, 32, 3, 1, 3), False, False),     # pad >= k
    ((2, 96, 9, 9, 32, 1, 1, 1), False, False),     # k = 1 with padding (pad >= k)
    ((2, 96, 9, 9, 32, 1, 1, 0), False, False),     # 1x1: the pointwise route
])
def test_route_selection(shape, forward, backward):
    """Between the im2col routes (the direct route off)."""
    n, c, h, w, o, k, s, p = shape
    layer = make(c, o, k, s, p, np.float32)
    layer.direct = "never"
    x = np.random.default_rng(12).standard_normal((n, c, h, w)).astype(np.float32)
    layer.forward(x)
    assert ("Wf" in layer._work) == forward
    layer._work.pop("Wf", None)        # only the flipped stack: backward may reuse col
    layer.backward(np.ones((n, o, conv_out_size(h, k, s, p), conv_out_size(w, k, s, p)),
                           np.float32))
    assert ("Wf" in layer._work) == backward


def test_gradient_without_bias():
    x = np.random.default_rng(4).standard_normal((2, 3, 6, 6))
    layer = make(3, 2, 3, 1, 1, np.float64, bias=False)
    assert "b" not in layer.params
    check_backward(layer, x)
    np.testing.assert_allclose(layer.forward(x), conv_loops(x, layer.params["W"], None, 1, 1),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("k,s,p,h,w", [
    (3, 1, 1, 7, 7), (5, 1, 2, 7, 7), (3, 2, 1, 7, 7), (2, 2, 0, 7, 7), (3, 1, 0, 7, 7),
    (3, 1, 3, 7, 7), (3, 2, 1, 8, 6), (7, 2, 3, 8, 8), (4, 2, 1, 6, 8), (3, 3, 1, 9, 6),
    (3, 1, 1, 1, 2), (5, 1, 2, 2, 2)])
@pytest.mark.parametrize("dx_layout", ["contiguous", "sample range", "sample-major"])
@pytest.mark.parametrize("phases", [False, True])
def test_im2col_matches_windows_and_col2im_is_its_adjoint(k, s, p, h, w, dx_layout, phases):
    """col rows are tap-major windows of the padded input, and <im2col(x), c> == <x, col2im(c)>
    for random x, c (so backward is exactly the transpose of forward); with ``phases`` strided
    geometries where the output is the input / stride take the polyphase path. dx (C, G, H, W)
    is C-contiguous, a sample range of a channel-major array (each channel one dense run, the
    runs apart) or a view of (G, C, H, W) memory; shifts longer than a channel's run (tiny
    images) land nowhere."""
    rng = np.random.default_rng(5)
    g, c = (1 if h * w <= 4 else 3), 2          # tiny images: one sample, shorter runs
    x = rng.standard_normal((c, g, h, w))
    oh, ow = conv_out_size(h, k, s, p), conv_out_size(w, k, s, p)
    scratch = np.full(x.size, np.nan) if phases else None
    col = im2col(x, k, s, p, np.full((k * k * c, g * oh * ow), np.nan), scratch)
    xpad = np.zeros((c, g, h + 2 * p, w + 2 * p))
    xpad[:, :, p:p + h, p:p + w] = x
    for i in range(k):
        for j in range(k):
            window = xpad[:, :, i:i + s * (oh - 1) + 1:s, j:j + s * (ow - 1) + 1:s]
            np.testing.assert_array_equal(col.reshape(k, k, c, g, oh, ow)[i, j], window)
    cc = rng.standard_normal(col.shape)
    dx = {"contiguous": np.full(x.shape, np.nan),
          "sample range": np.full((c, g + 2, h, w), np.nan)[:, 1:g + 1],
          "sample-major": np.full((g, c, h, w), np.nan).transpose(1, 0, 2, 3)}[dx_layout]
    col2im(cc.copy(), k, s, p, dx, scratch)
    np.testing.assert_allclose(np.sum(col * cc), np.sum(x * dx), rtol=1e-12)


def test_im2col_rejects_a_strided_col():
    col = np.zeros((9 * 2, 2 * 25))[:, :25]
    with pytest.raises(ValueError, match="C-contiguous"):
        im2col(np.zeros((2, 1, 5, 5)), 3, 1, 1, col)


@pytest.mark.parametrize("chunks", [7, 3, 1])
@pytest.mark.parametrize("route", ["input", "output"])
def test_chunking_and_route_do_not_change_results(chunks, route):
    """7 samples in chunks of 1, of 3 (a short last chunk) or all in one, on either route,
    against the input-side route with the whole batch in one chunk."""
    rng = np.random.default_rng(6)
    x = rng.standard_normal((7, 2, 6, 6))
    dy = rng.standard_normal((7, 3, 6, 6))
    ref = make(2, 3, 3, 1, 1, np.float64, route="input")
    ref.chunk_bytes = 1 << 30
    y_ref, dx_ref = ref.forward(x), ref.backward(dy.copy())
    layer = make(2, 3, 3, 1, 1, np.float64, route=route)
    rows = 3 * 9 if route == "output" else 2 * 9 + 1     # k*k*O rows of Z, or k*k*C + 1 of col
    layer.chunk_bytes = rows * 36 * 8 * (7 // chunks)
    assert layer._chunk(7, rows, 36, 8) == 7 // chunks
    np.testing.assert_allclose(layer.forward(x), y_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(layer.backward(dy.copy()), dx_ref, rtol=1e-12, atol=1e-12)
    assert ("Wf" in layer._work) == (route == "output")
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
        layer = make(2, 4, 3, 2, 1, np.float64, route="input")
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
                                   (4, 16, 14, 14, 24, 1, 1, 0), (4, 3, 15, 15, 8, 7, 2, 3),
                                   (4, 16, 14, 14, 40, 3, 1, 1)])
def test_float32(shape):
    """Default routes: input-side forward with output-side backward (C < O <= 1.5 C), output
    side (O < C), 1x1, a strided 7x7, input side (O > 1.5 C)."""
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


@pytest.fixture
def two_workers():
    parallel.set_workers(2)
    yield
    parallel.set_workers(1)


def test_chunk_is_capped_at_one_workers_share():
    layer = Conv2D(2, 3, 3)
    assert layer._chunk(128, 19, 36, 4) == 128             # all fits: one chunk
    assert layer._chunk(128, 19, 36, 4, workers=2) == 64
    assert layer._chunk(7, 19, 36, 4, workers=2) == 4      # ranges of 4 and 3
    assert layer._chunk(1, 19, 36, 4, workers=2) == 1
    layer.chunk_bytes = 19 * 36 * 4 * 3
    assert layer._chunk(128, 19, 36, 4, workers=2) == 3
    layer.chunk_bytes, layer.worker_chunk_bytes = 19 * 36 * 4 * 8, 19 * 36 * 4 * 5
    assert layer._chunk(128, 19, 36, 4) == 8
    assert layer._chunk(128, 19, 36, 4, workers=2) == 5


def _run(layer, x, dy):
    y = layer.forward(x)
    dx = layer.backward(dy.copy())
    return y, dx, {name: g.copy() for name, g in layer.grads.items()}


# (N, C, H, W, O, k, stride, pad, route, chunk_bytes): both routes, the pointwise path, a strided
# (input-side only) layer, batches of 1 (fewer samples than workers) and 5 (odd: ranges of 3 and
# 2), one chunk per worker and chunks of one sample.
PARALLEL = [
    (5, 3, 6, 6, 4, 3, 1, 1, "input", 1 << 30),
    (5, 3, 6, 6, 4, 3, 1, 1, "input", 1),
    (4, 5, 7, 6, 3, 3, 1, 1, "output", 1 << 30),
    (5, 5, 7, 6, 3, 5, 1, 1, "output", 1),
    (5, 4, 7, 7, 3, 3, 1, 0, "output-fwd", 1 << 30),
    (6, 4, 7, 7, 3, 3, 1, 2, "output-bwd", 3 * 9 * 49 * 8 * 2),   # chunks of 2 in ranges of 3
    (5, 4, 5, 5, 6, 1, 1, 0, None, 1 << 30),
    (7, 4, 5, 5, 6, 1, 1, 0, None, 1),
    (5, 3, 9, 9, 4, 3, 2, 1, None, 1 << 30),
    (1, 3, 6, 6, 4, 3, 1, 1, "input", 1 << 30),
    (1, 5, 6, 6, 3, 3, 1, 1, "output", 1 << 30),
    (1, 4, 5, 5, 6, 1, 1, 0, None, 1 << 30),
]


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", PARALLEL)
def test_two_workers_match_one(shape, bias, two_workers):
    """Forward, dx and the gradients with the samples split over 2 worker threads equal the
    single-worker results; every worker used its own workspaces."""
    n, c, h, w, o, k, s, p, route, chunk_bytes = shape
    rng = np.random.default_rng(13)
    x = rng.standard_normal((n, c, h, w))
    dy = rng.standard_normal((n, o, conv_out_size(h, k, s, p), conv_out_size(w, k, s, p)))
    layer = make(c, o, k, s, p, np.float64, bias=bias, route=route)
    layer.chunk_bytes = chunk_bytes
    parallel.set_workers(1)
    y1, dx1, g1 = _run(layer, x, dy)
    parallel.set_workers(2)
    for _ in range(2):                      # the second call reuses the workers' workspaces
        y2, dx2, g2 = _run(layer, x, dy)
        np.testing.assert_allclose(y2, y1, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(dx2, dx1, rtol=1e-12, atol=1e-12)
        assert g2.keys() == g1.keys()
        for name in g1:
            np.testing.assert_allclose(g2[name], g1[name], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(y1, conv_loops(x, layer.params["W"], layer.params.get("b"), s, p),
                               rtol=1e-12, atol=1e-12)
    worker_keys = {key[1] for key in layer._work if isinstance(key, tuple)}
    if conv_direct.takes(layer, x, "backward"):     # its buffers are scratch, not kept
        assert (("dW", 1) in layer._work) == (n > 1)  # but worker 1 sums its own dW
    elif layer.pointwise:        # no scratch: worker 0 writes dW itself, the others partials
        assert worker_keys == ({1} if n > 1 else set())
    else:
        assert worker_keys == ({0, 1} if n > 1 else {0})


def test_two_workers_gradient(two_workers):
    """Finite differences with 2 workers on both routes (the workers' partial dW summed)."""
    x = np.random.default_rng(14).standard_normal((3, 3, 6, 6))
    for route in ("input", "output"):
        layer = make(3, 4, 3, 1, 1, np.float64, route=route)
        layer.chunk_bytes = 1
        check_backward(layer, x)


def test_two_workers_reuse_col_only_for_the_same_split(two_workers):
    """backward reuses the workers' last col chunks only when forward split the batch the same
    way: after a forward with 1 worker, a 2-worker backward recomputes them."""
    rng = np.random.default_rng(15)
    x, dy = rng.standard_normal((5, 2, 6, 6)), rng.standard_normal((5, 3, 3, 3))
    layer = make(2, 3, 3, 2, 1, np.float64, route="input")
    ref = _run(layer, x, dy)
    parallel.set_workers(1)
    layer.forward(x)
    parallel.set_workers(2)
    np.testing.assert_array_equal(layer.backward(dy.copy()), ref[1])
    np.testing.assert_array_equal(layer.grads["W"], ref[2]["W"])
    layer.forward(x)
    parallel.set_workers(1)
    np.testing.assert_allclose(layer.backward(dy.copy()), ref[1], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(layer.grads["W"], ref[2]["W"], rtol=1e-12, atol=1e-12)


# -- grouped convolution ---------------------------------------------------------------------
# (N, C, H, W, O, k, stride, pad, groups): AlexNet's conv2 (5x5) and conv4/5 (3x3) shapes in
# small, more groups, a 1x1 and a strided grouped layer.
GROUPED = [(2, 4, 7, 7, 6, 5, 1, 2, 2), (2, 4, 6, 6, 4, 3, 1, 1, 2), (1, 6, 5, 5, 9, 3, 1, 1, 3),
           (2, 4, 5, 5, 4, 1, 1, 0, 4), (2, 4, 8, 8, 2, 3, 2, 1, 2)]


@pytest.mark.parametrize("n, c, h, w, o, k, s, p, g", GROUPED)
def test_grouped_convolution_is_one_convolution_per_channel_block(n, c, h, w, o, k, s, p, g):
    rng = np.random.default_rng(7)
    layer = Conv2D(c, o, k, stride=s, pad=p, groups=g).build(np.float64, seed=1)
    assert layer.params["W"].shape == (o, c // g, k, k)
    x = rng.standard_normal((n, c, h, w))
    y = layer.forward(x)
    og, cg = o // g, c // g
    for i in range(g):
        rows = slice(i * og, (i + 1) * og)
        expected = conv_loops(x[:, i * cg:(i + 1) * cg], layer.params["W"][rows],
                              layer.params["b"][rows], s, p)
        np.testing.assert_allclose(y[:, rows], expected, rtol=1e-12, atol=1e-12)
    assert layer.forward_flops == 2 * n * o * cg * k * k * y.shape[2] * y.shape[3]


@pytest.mark.parametrize("n, c, h, w, o, k, s, p, g", GROUPED)
def test_grouped_convolution_gradients(n, c, h, w, o, k, s, p, g):
    layer = Conv2D(c, o, k, stride=s, pad=p, groups=g).build(np.float64, seed=2)
    check_backward(layer, np.random.default_rng(3).standard_normal((n, c, h, w)))


def test_grouped_convolution_equals_pytorch():
    import torch                              # the test extra's: declared, never skipped
    rng = np.random.default_rng(4)
    layer = Conv2D(8, 12, 3, stride=1, pad=1, groups=2).build(np.float64, seed=5)
    x, dy = rng.standard_normal((3, 8, 9, 9)), rng.standard_normal((3, 12, 9, 9))
    twin = torch.nn.Conv2d(8, 12, 3, 1, 1, groups=2).double()
    with torch.no_grad():
        twin.weight.copy_(torch.from_numpy(layer.params["W"]))
        twin.bias.copy_(torch.from_numpy(layer.params["b"]))
    tx = torch.from_numpy(x.copy()).requires_grad_()
    ty = twin(tx)
    ty.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(layer.forward(x), ty.detach().numpy(), rtol=1e-10, atol=1e-12)
    dx = layer.backward(dy.copy())
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(layer.grads["W"], twin.weight.grad.numpy(), rtol=1e-10)
    np.testing.assert_allclose(layer.grads["b"], twin.bias.grad.numpy(), rtol=1e-10)


def test_groups_must_divide_the_channels():
    with pytest.raises(ValueError, match="groups must be an int >= 1 dividing the 6 input and "
                                         "4 output channels, got 4"):
        Conv2D(6, 4, 3, groups=4)
