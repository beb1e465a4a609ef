"""The direct convolution route (layers/conv_direct.py, layers/c/conv.c) against the
definition, finite differences and the im2col routes."""
import numpy as np
import pytest

from layers import c as ckernels
from layers import conv_direct, parallel
from layers.conv import Conv2D
from layers.window import conv_out_size
from tests.gradient_check import check_backward
from tests.layers.test_conv import GROUPED, SHAPES, conv_loops, make

# (N, C, H, W, O, k, stride, pad) beyond SHAPES: output channels that are not a whole number of
# vectors, kernels of 5, 7 and 11 (dW's taps in runs of 3, 2 and 1), stride 4, rows that are
# not a whole number of vectors, pad > k - 1, and 13 channels through the strided dx
# scatter's tiles (8, 4 and 1 channels by 1 to 5 vectors of positions).
MORE = [
    (3, 5, 9, 9, 13, 3, 1, 1),
    (2, 9, 6, 11, 10, 5, 1, 2),
    (2, 3, 23, 23, 9, 11, 4, 0),
    (2, 4, 12, 12, 17, 7, 2, 3),
    (1, 3, 10, 10, 8, 3, 3, 2),
    (2, 2, 5, 5, 3, 2, 1, 0),
    (2, 3, 4, 4, 5, 3, 1, 3),
    (2, 3, 7, 7, 13, 3, 1, 1),
    (2, 13, 6, 6, 5, 1, 2, 0),
    (1, 13, 7, 5, 4, 4, 3, 1),
]

# The forward's and dW's tiles, vectors along output channels (conv.c's ctile and dtile). In
# float64 (8 lanes): 9 vectors of outputs as 4, 4 and 1 by rows of 30 in five pieces of 6,
# with dW's pairs and a single and 11 channels as 4 + 4 + 3 and 8 + 3; 7x7 rows as 4 + 1
# vectors by 7; 3 vectors by 9 and 8 positions with dW's 5 taps a row as 3 + 2; a strided
# layer's planes with runs of 2 and 1. In float32 (16 lanes) 5, 3, 2 and 3 vectors.
VECTORS = [
    (1, 11, 9, 30, 70, 3, 1, 1),
    (2, 25, 7, 7, 40, 3, 1, 1),
    (1, 5, 12, 17, 24, 5, 1, 2),
    (2, 6, 9, 9, 33, 3, 2, 1),
]

# Shapes whose channels span several chunks (conv.c: WCHUNK_BYTES, 96 KiB of one forward
# tile's weights, 42 input channels of 4 vectors of outputs by 3x3; CHUNK_BYTES, 24 KiB of
# the scatter's reads by one tile, 128 of its dy channels in float64): the forward's input
# channels, the transposed dx's (its O), the strided forward's, and the strided dx scatter's.
# The last's sample is large enough for bands of rows (band_rows: 3 MB of planes and outputs
# in float64, in bands of 16 of its 96 rows).
WIDE = [
    (1, 50, 20, 20, 40, 3, 1, 1),
    (1, 40, 20, 20, 100, 3, 1, 1),
    (2, 50, 20, 20, 40, 3, 2, 1),
    (1, 6, 12, 12, 136, 3, 2, 1),
    (1, 16, 96, 96, 24, 3, 1, 1),
]


@pytest.fixture(autouse=True)
def built():
    """The library must build wherever the kernels are on: a missing compiler fails here,
    naming the reason, rather than leaving the route untested."""
    if not ckernels.enabled():
        pytest.skip("PT_C_KERNELS=0: the C kernels are off")
    for dtype in (np.float32, np.float64):
        assert conv_direct.library(dtype) is not None, ckernels.status(dtype)


@pytest.fixture
def calls(monkeypatch):
    """(name, arguments) of every call into the convolution's C library from here on: which
    kernels a pass ran."""
    seen, real = [], conv_direct.library

    class Spy:
        def __init__(self, lib):
            self.lib = lib

        def __getattr__(self, name):
            def call(*args):
                seen.append((name, args))
                return getattr(self.lib, name)(*args)
            return call

    monkeypatch.setattr(conv_direct, "library", lambda dtype: Spy(real(dtype)))
    return seen


def called(calls, name):
    return [args for what, args in calls if what == name]


def direct(c, o, k, s, p, dtype, **kwargs):
    layer = make(c, o, k, s, p, dtype, **kwargs)
    layer.direct = "always"
    return layer


def dy_for(layer, x, seed):
    n, _, h, w = x.shape
    k, s, p = layer.k, layer.stride, layer.pad
    return np.random.default_rng(seed).standard_normal(
        (n, layer.out_ch, conv_out_size(h, k, s, p), conv_out_size(w, k, s, p)))


@pytest.mark.parametrize("shape", SHAPES + MORE)
def test_forward_matches_loops(shape, calls):
    n, c, h, w, o, k, s, p = shape
    x = np.random.default_rng(20).standard_normal((n, c, h, w))
    layer = direct(c, o, k, s, p, np.float64)
    taken = conv_direct.takes(layer, x)
    assert taken == (k > 1 or s > 1)           # 1x1 stride 1 stays a plain GEMM
    y = layer.forward(x)
    np.testing.assert_allclose(y, conv_loops(x, layer.params["W"], layer.params["b"], s, p),
                               rtol=1e-12, atol=1e-12)
    assert bool(called(calls, "conv_forward") + called(calls, "conv_forward_wino")) == taken


@pytest.mark.parametrize("chunk_bytes", [1, Conv2D.direct_chunk_bytes])
@pytest.mark.parametrize("shape", SHAPES + MORE)
def test_gradient(shape, chunk_bytes):
    """Finite differences, with one sample per dW chunk and with the default chunks."""
    n, c, h, w, o, k, s, p = shape
    x = np.random.default_rng(21).standard_normal((n, c, h, w))
    layer = direct(c, o, k, s, p, np.float64)
    layer.direct_chunk_bytes = chunk_bytes
    check_backward(layer, x)


@pytest.mark.parametrize("shape", SHAPES + MORE + VECTORS + WIDE)
def test_equals_the_im2col_route(shape):
    """Forward, dx and the gradients equal the input-side im2col route's (float64)."""
    n, c, h, w, o, k, s, p = shape
    x = np.random.default_rng(22).standard_normal((n, c, h, w))
    ref, layer = make(c, o, k, s, p, np.float64, route="input"), direct(c, o, k, s, p,
                                                                         np.float64)
    dy = dy_for(layer, x, 23)
    np.testing.assert_allclose(layer.forward(x), ref.forward(x), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(layer.backward(dy.copy()), ref.backward(dy.copy()),
                               rtol=1e-12, atol=1e-12)
    for name in ref.grads:
        np.testing.assert_allclose(layer.grads[name], ref.grads[name], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", [(4, 16, 16, 16, 24, 3, 1, 1)] + VECTORS)
def test_float32_against_float64(shape):
    """The float32 library (16-lane vectors) against the float64 one: a ResNet-like layer and
    the tile shapes."""
    n, c, h, w, o, k, s, p = shape
    x = np.random.default_rng(24).standard_normal((n, c, h, w))
    l64 = direct(c, o, k, s, p, np.float64)
    l32 = direct(c, o, k, s, p, np.float32)
    for name in l64.params:
        l32.params[name][...] = l64.params[name]
    dy = dy_for(l64, x, 25)
    np.testing.assert_allclose(l32.forward(x.astype(np.float32)), l64.forward(x),
                               rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(l32.backward(dy.astype(np.float32)), l64.backward(dy.copy()),
                               rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(l32.grads["W"], l64.grads["W"], rtol=1e-4, atol=1e-3)


def test_without_input_gradient_and_bias():
    """needs_input_grad = False returns None and still gives dW; no bias, no db."""
    x = np.random.default_rng(26).standard_normal((2, 3, 8, 8))
    ref = make(3, 4, 3, 2, 1, np.float64, bias=False, route="input")
    layer = direct(3, 4, 3, 2, 1, np.float64, bias=False)
    layer.needs_input_grad = ref.needs_input_grad = False
    dy = dy_for(layer, x, 27)
    layer.forward(x)
    ref.forward(x)
    assert layer.backward(dy.copy()) is None and ref.backward(dy.copy()) is None
    assert "b" not in layer.grads
    np.testing.assert_allclose(layer.grads["W"], ref.grads["W"], rtol=1e-12, atol=1e-12)


@pytest.fixture
def two_workers():
    parallel.set_workers(2)
    yield
    parallel.set_workers(1)


@pytest.mark.parametrize("n, c, h, w, o, p, winograd", [
    (1, 6, 9, 9, 10, 1, "never"), (5, 6, 9, 9, 10, 1, "never"), (8, 6, 9, 9, 10, 1, "never"),
    (13, 8, 6, 13, 8, 2, "always"),
])
def test_two_workers_match_one(n, c, h, w, o, p, winograd, two_workers):
    """Samples split over 2 threads (ranges of 3 and 2, or one worker for one sample), the dW
    partials summed: equal to one worker. By Winograd too: groups of 4 samples and a short
    one, the weights' transforms over ranges of channels."""
    x = np.random.default_rng(28).standard_normal((n, c, h, w))
    layer = direct(c, o, 3, 1, p, np.float64)
    layer.winograd = winograd
    dy = dy_for(layer, x, 29)
    results = []
    for workers in (1, 2):
        parallel.set_workers(workers)
        y, dx = layer.forward(x), layer.backward(dy.copy())
        results.append((y, dx, layer.grads["W"].copy(), layer.grads["b"].copy()))
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("n, c, h, w, o, k, s, p, g", GROUPED)
def test_grouped(n, c, h, w, o, k, s, p, g, calls):
    """Each group's convolution takes the direct route (its channel block is channel-major)."""
    x = np.random.default_rng(30).standard_normal((n, c, h, w))
    layer = Conv2D(c, o, k, s, p, groups=g).build(np.float64, seed=0)
    layer.direct = "always"
    check_backward(layer, x)
    ref = Conv2D(c, o, k, s, p, groups=g).build(np.float64, seed=0)
    ref.direct = "never"
    np.testing.assert_allclose(layer.forward(x), ref.forward(x), rtol=1e-12, atol=1e-12)
    layer.direct = "always"
    calls.clear()
    layer.forward(x)
    assert len(called(calls, "conv_forward")) == (g if k > 1 or s > 1 else 0)


@pytest.mark.parametrize("view", ["C order", "channel range"])
def test_input_read_in_its_own_layout(view):
    """x in C order (the loader's batches) or a channel range of a C-order array (a group's
    input) is read where it lies, through its strides: no channel-major copy."""
    x = np.random.default_rng(31).standard_normal((3, 5, 7, 7))
    x = x[:, 1:3] if view == "channel range" else np.ascontiguousarray(x[:, :2])
    layer = direct(2, 3, 3, 2, 1, np.float64)
    assert conv_direct.planes(x)[0] is x
    dy = dy_for(layer, x, 33)
    ref = make(2, 3, 3, 2, 1, np.float64, route="input")
    np.testing.assert_allclose(layer.forward(x), conv_loops(x, layer.params["W"],
                                                            layer.params["b"], 2, 1),
                               rtol=1e-12, atol=1e-12)
    ref.forward(x)
    np.testing.assert_allclose(layer.backward(dy.copy()), ref.backward(dy.copy()),
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(layer.grads["W"], ref.grads["W"], rtol=1e-12, atol=1e-12)
    assert conv_direct.planes(x[:, :, :, ::2]) is None       # planes not dense: copied


def test_switched_off_per_layer(calls):
    x = np.random.default_rng(32).standard_normal((2, 3, 6, 6))
    layer = make(3, 4, 3, 1, 1, np.float64)
    layer.direct = "always"
    assert conv_direct.takes(layer, x)
    layer.direct = "never"
    assert not conv_direct.takes(layer, x)
    layer.forward(x)
    assert not calls
    layer.direct = True
    with pytest.raises(ValueError, match="direct must be one of auto, always, never, got True"):
        layer.forward(x)
    layer.direct, layer.winograd = "never", "on"     # refused even where it would not be used
    with pytest.raises(ValueError, match="winograd must be one of auto, always, never, got 'on'"):
        layer.forward(x)


@pytest.mark.parametrize("c, o, k, s, size, forward, backward", [
    (16, 16, 3, 1, 32, True, True),        # CIFAR ResNet stage 1
    (64, 64, 3, 1, 8, True, True),         # CIFAR ResNet stage 3: 64 positions
    (512, 512, 3, 1, 7, False, False),     # weights beyond the bound, 49 positions
    (512, 512, 3, 1, 8, True, True),       # ... but 64 positions
    (160, 96, 3, 1, 7, True, True),        # 49 positions, weights within the bound
    (256, 256, 3, 1, 56, True, True),      # large weights, 3,136 positions
    (16, 32, 3, 2, 32, True, True),        # strided, small: dx by the scatter
    (256, 256, 3, 2, 28, True, False),     # strided, large: dx by the im2col route ...
    (3, 16, 17, 1, 32, False, False),      # a kernel wider than 16
])
def test_auto_bounds(c, o, k, s, size, forward, backward):
    layer = Conv2D(c, o, k, s, k // 2)
    x = np.empty((1, c, size, size), np.float32)
    assert conv_direct.takes(layer, x, "forward") == forward
    assert conv_direct.takes(layer, x, "backward") == backward
    if s > 1 and forward:
        layer.needs_input_grad = False     # ... unless it is a first layer: dW only
        assert conv_direct.takes(layer, x, "backward")


# 3x3 stride-1 shapes for Winograd's F(2x2, 3x3) (conv.c: wino_*): odd outputs (partial
# tiles down and across), pads 0 and 2 (the transposed convolution's 2 and 0), small images
# whose groups take both samples of the batch into one band (groups of 4-32 samples for the
# forward's 128 tiles, 16-128 for dW's 512) and 20 samples in groups of 4 (forward) and of 16
# and 4 (dW); rows of 20 tiles (the input transform's vectors of 16 or 8 tiles and a tail) and
# 75 of them in bands (forward 12 rows in float64, the last 3 short, or 25 in float32; dW 26);
# 1,600 channels that span two chunks of the products' input channels, forward and for dx.
WINOGRAD = [
    (2, 5, 9, 9, 13, 3, 1, 1),
    (1, 40, 6, 13, 40, 3, 1, 2),
    (20, 8, 6, 13, 8, 3, 1, 2),
    (2, 33, 7, 8, 17, 3, 1, 0),
    (1, 16, 150, 40, 16, 3, 1, 1),
    (1, 1600, 3, 3, 8, 3, 1, 1),
    (1, 8, 3, 3, 1600, 3, 1, 1),
]


@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-12), (np.float32, 1e-4)])
@pytest.mark.parametrize("shape", WINOGRAD + VECTORS[:2])
def test_winograd_equals_direct(shape, dtype, tol, calls):
    """Forward, dx and the gradients by Winograd equal the direct products' to ``tol`` of
    their largest value (the kernels called show which was taken)."""
    n, c, h, w, o, k, s, p = shape
    x = np.random.default_rng(40).standard_normal((n, c, h, w)).astype(dtype)
    ref, layer = direct(c, o, k, s, p, dtype), direct(c, o, k, s, p, dtype)
    ref.winograd, layer.winograd = "never", "always"
    dy = dy_for(layer, x, 41).astype(dtype)
    pairs = [(layer.forward(x), ref.forward(x)),
             (layer.backward(dy.copy()), ref.backward(dy.copy()))]
    for got, want in pairs + [(layer.grads[name], ref.grads[name]) for name in ref.grads]:
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.abs(want).max())
    assert len(called(calls, "conv_forward_wino")) == len(called(calls, "conv_forward")) > 0
    flips = [args[6].value for args in called(calls, "conv_wino_weights")]
    assert 0 in flips and 1 in flips                     # the forward's and dx's weights
    wino_dw = [args[6].value for args in called(calls, "conv_backward")]
    assert sorted(set(wino_dw)) == [0, 1]                # the reference's dW, and Winograd's


@pytest.mark.parametrize("shape", WINOGRAD[:3])
def test_winograd_gradient(shape):
    n, c, h, w, o, k, s, p = shape
    x = np.random.default_rng(42).standard_normal((n, c, h, w))
    layer = direct(c, o, k, s, p, np.float64)
    layer.winograd = "always"
    check_backward(layer, x)


@pytest.mark.parametrize("c, o, k, s, p, size, forward, dx, dw", [
    (64, 64, 3, 1, 1, 8, True, True, False),        # dW: too few channels on small rows
    (128, 128, 3, 1, 1, 8, True, True, True),
    (64, 64, 3, 1, 1, 32, True, True, True),        # ... or rows of 32
    (16, 16, 3, 1, 1, 32, False, False, True),      # too few channels for y and dx
    (64, 32, 3, 1, 1, 8, True, False, False),       # dx sums over the 32 output channels
    (32, 64, 3, 1, 1, 8, False, True, False),
    (64, 64, 3, 2, 1, 32, False, False, False),     # strided
    (64, 64, 5, 1, 2, 32, False, False, False),     # not 3x3
    (64, 64, 3, 1, 3, 32, False, False, False),     # pad 3: dx by the scatter
])
def test_winograd_auto(c, o, k, s, p, size, forward, dx, dw):
    layer = Conv2D(c, o, k, s, p)
    x = np.empty((1, c, size, size), np.float32)
    assert [conv_direct.winograd(layer, x, phase) for phase in ("forward", "input", "weights")] \
        == [forward, dx, dw]
    layer.needs_input_grad = False
    assert not conv_direct.winograd(layer, x, "input")
    assert conv_direct.winograd(layer, x, "weights") == dw
    layer.winograd = "never"
    assert not conv_direct.winograd(layer, x)
    layer.winograd = "sometimes"
    with pytest.raises(ValueError, match="winograd must be one of auto, always, never, got "
                                         "'sometimes'"):
        conv_direct.winograd(layer, x)


@pytest.mark.parametrize("c, o, size, dx, dw", [(16, 16, 32, False, True),
                                                 (16, 64, 8, True, False)])
def test_winograd_for_one_of_dx_and_dw(c, o, size, dx, dw, calls):
    """auto's mixes, dW by Winograd with dx by the direct products and the reverse, against
    the direct route."""
    x = np.random.default_rng(43).standard_normal((2, c, size, size))
    ref, layer = direct(c, o, 3, 1, 1, np.float64), direct(c, o, 3, 1, 1, np.float64)
    ref.winograd = "never"
    assert [conv_direct.winograd(layer, x, phase) for phase in ("input", "weights")] == [dx, dw]
    dy = dy_for(ref, x, 44)
    np.testing.assert_allclose(layer.forward(x), ref.forward(x), rtol=1e-12, atol=1e-12)
    want = ref.backward(dy.copy())
    calls.clear()
    np.testing.assert_allclose(layer.backward(dy.copy()), want, rtol=1e-12, atol=1e-12)
    (args,) = called(calls, "conv_backward")
    assert (args[5] is not None, args[6].value) == (dx, dw)     # uf, wino_dw
    np.testing.assert_allclose(layer.grads["W"], ref.grads["W"], rtol=1e-12, atol=1e-12)
