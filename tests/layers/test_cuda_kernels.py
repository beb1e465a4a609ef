"""The CUDA kernels (layers/cuda/*.cu) built for the CPU (tests/layers/cuda_on_cpu.py): each
kernel against NumPy, then every layer's kernel path (what runs on a GPU, with NumPy arrays
standing in for CuPy ones) against its CPU path, and whole models through them. Only their
speed, and CuPy itself, need a GPU (tests/gpu)."""
import numpy as np
import pytest

from layers import backend, cuda, layout
from core.optimizers import SGD, Adagrad
from layers.avg_pool import AvgPool2D
from layers.batch_norm import BatchNorm2D
from layers.conv import Conv2D
from layers.window import conv_out_size
from layers.dropout import Dropout
from layers.lrn import LRN
from layers.max_pool import MaxPool2D
from layers.relu import ReLU
from layers.sequential import Sequential
from layers.softmax_cross_entropy import SoftmaxCrossEntropy
from tests.layers import cuda_on_cpu

RNG = np.random.default_rng(11)


def switch_on(monkeypatch):
    """Layers take their kernel paths, the kernels run as CPU code."""
    cuda_on_cpu.compiler()
    monkeypatch.setattr(backend, "uses_kernels", lambda xp: True)
    monkeypatch.setattr(cuda, "launch", cuda_on_cpu.launch)


@pytest.fixture
def kernels(monkeypatch):
    switch_on(monkeypatch)


def reference_im2col(x, k, stride, pad):
    """col[(c, i, j), (n, oh, ow)] = xpad[n, c, oh*s + i, ow*s + j], by slicing."""
    n, c, h, w = x.shape
    oh, ow = conv_out_size(h, k, stride, pad), conv_out_size(w, k, stride, pad)
    xpad = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    col = np.empty((c, k, k, n, oh, ow), x.dtype)
    for i in range(k):
        for j in range(k):
            col[:, i, j] = xpad[:, :, i:i + (oh - 1) * stride + 1:stride,
                                j:j + (ow - 1) * stride + 1:stride].transpose(1, 0, 2, 3)
    return col.reshape(c * k * k, n * oh * ow)


GEOMETRIES = [  # (n, c, h, w, k, stride, pad)
    (2, 3, 7, 7, 3, 1, 1), (1, 2, 8, 6, 3, 2, 1), (3, 2, 9, 9, 5, 2, 2), (2, 1, 11, 11, 7, 2, 3),
    (1, 4, 5, 7, 2, 1, 0), (2, 2, 6, 6, 3, 3, 0), (1, 1, 4, 4, 4, 1, 0), (3, 5, 4, 6, 1, 1, 0)]


def strides(a):
    return a.strides[0] // a.itemsize, a.strides[1] // a.itemsize


@pytest.mark.parametrize("channel_major", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n, c, h, w, k, s, p", GEOMETRIES)
def test_im2col_and_col2im_kernels(n, c, h, w, k, s, p, dtype, channel_major):
    cuda_on_cpu.compiler()
    x = RNG.standard_normal((n, c, h, w)).astype(dtype)
    if channel_major:
        x = layout.to_channel_major(x)
    oh, ow = conv_out_size(h, k, s, p), conv_out_size(w, k, s, p)
    col = np.full((c * k * k, n * oh * ow), np.nan, dtype)
    cuda_on_cpu.launch("conv", "im2col", dtype, c * n * oh * ow,
                       (x, col, n, c, h, w, k, s, p, oh, ow, *strides(x)))
    np.testing.assert_array_equal(col, reference_im2col(x, k, s, p))
    # col2im is the adjoint: <im2col(x), d> == <x, col2im(d)> for every x and d
    d = RNG.standard_normal(col.shape).astype(dtype)
    dx = layout.empty_as(x.shape, dtype, channel_major)
    dx[...] = np.nan
    cuda_on_cpu.launch("conv", "col2im", dtype, dx.size,
                       (d, dx, n, c, h, w, k, s, p, oh, ow, *strides(dx)))
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(np.vdot(col.astype(np.float64), d), np.vdot(x, dx.astype(
        np.float64)), rtol=rtol)
    for e in RNG.choice(x.size, size=min(x.size, 5), replace=False):   # and entry by entry
        unit = np.zeros(x.size, dtype)
        unit[e] = 1
        np.testing.assert_allclose(dx.reshape(-1)[e], np.vdot(reference_im2col(
            unit.reshape(x.shape), k, s, p), d), rtol=rtol, atol=rtol)


POOLS = [  # (n, c, h, w, k, stride, pad, ceil_mode)
    (2, 3, 7, 7, 3, 2, 0, True), (1, 2, 8, 8, 3, 2, 1, True), (2, 2, 9, 6, 2, 2, 0, True),
    (1, 3, 14, 14, 3, 1, 1, True), (2, 1, 5, 5, 5, 3, 2, True), (1, 2, 7, 7, 3, 2, 1, False)]


def layer_pair(make, x, dy, monkeypatch):
    """(y, dx, grads) of a fresh layer on the CPU path, then on the kernel path."""
    results = []
    for use_kernels in (False, True):
        if use_kernels:
            switch_on(monkeypatch)
        layer = make().build(x.dtype, seed=5)
        y = layer.forward(x.copy(), train=True)
        dx = layer.backward(dy.copy())
        results.append((y, dx, {k: g.copy() for k, g in layer.grads.items()}))
    return results


def check_layer(make, shape, monkeypatch, dtype=np.float64, x=None, scale=1.0):
    """The kernel path equals the CPU path to float64/float32 rounding (times ``scale``, for
    inputs whose size makes float32 lose more)."""
    x = RNG.standard_normal(shape).astype(dtype) if x is None else x
    y_shape = make().build(dtype).forward(x.copy()).shape
    dy = RNG.standard_normal(y_shape).astype(dtype)
    (y0, dx0, g0), (y1, dx1, g1) = layer_pair(make, x, dy, monkeypatch)
    tol = (1e-12 if dtype == np.float64 else 1e-5) * scale
    np.testing.assert_allclose(y1, y0, rtol=tol, atol=tol)
    np.testing.assert_allclose(dx1, dx0, rtol=tol, atol=tol)
    assert g0.keys() == g1.keys()
    for key in g0:
        np.testing.assert_allclose(g1[key], g0[key], rtol=tol, atol=tol, err_msg=key)


@pytest.mark.parametrize("n, c, h, w, k, s, p, ceil", POOLS)
def test_pooling_kernels_equal_the_cpu_layers(n, c, h, w, k, s, p, ceil, monkeypatch):
    for layer in (MaxPool2D, AvgPool2D):
        check_layer(lambda: layer(k, s, p, ceil_mode=ceil), (n, c, h, w), monkeypatch)
        monkeypatch.undo()


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("n, c, h, w, k, s, p", GEOMETRIES)
def test_conv_kernel_path_equals_the_cpu_layer(n, c, h, w, k, s, p, bias, monkeypatch):
    check_layer(lambda: Conv2D(c, 3, k, s, p, bias=bias), (n, c, h, w), monkeypatch)
    monkeypatch.undo()
    check_layer(lambda: Conv2D(c, 3, k, s, p, bias=bias), (n, c, h, w), monkeypatch,
                dtype=np.float32)


def test_max_pool_kernel_records_the_first_maximum_on_ties(kernels):
    x = np.zeros((1, 1, 4, 4))
    x[0, 0, 1, 1] = x[0, 0, 1, 2] = 5.0                  # a tie inside one window
    layer = MaxPool2D(3, 1).build(np.float64)
    y = layer.forward(x, train=True)
    dx = layer.backward(np.ones_like(y))
    assert dx[0, 0, 1, 1] == 4 and dx[0, 0, 1, 2] == 0   # every window holding both picks (1, 1)


@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("n, c, h, w, k, s, p", GEOMETRIES[:4] + GEOMETRIES[-1:])
def test_a_convolution_and_its_in_place_relu_fuse_on_the_kernel_path(n, c, h, w, k, s, p, bias,
                                                                     groups, monkeypatch):
    x = RNG.standard_normal((n, 2 * c, h, w))
    poisoned = x.copy()
    poisoned[0, 0, 0, 0] = np.nan                         # NaN stays NaN through the fused pass
    make = lambda: Sequential(Conv2D(2 * c, 4, k, s, p, bias=bias, groups=groups),
                              ReLU(inplace=True))
    dy = RNG.standard_normal(make().build(x.dtype).forward(x.copy()).shape)
    results = []
    for use_kernels in (False, True):
        if use_kernels:
            switch_on(monkeypatch)
        net = make().build(x.dtype, seed=5)
        conv, relu = net.layers
        assert conv.fuse_relu and relu.fused
        between = conv.forward(x.copy(), train=True)
        assert (between.min() >= 0) == use_kernels        # kernels: rectified by the conv
        y = relu.forward(between, train=True)
        dx = net.backward(dy.copy())
        nans = np.isnan(net.forward(poisoned.copy(), train=False))
        results.append((y, dx, {k: g.copy() for k, g in conv.grads.items()}, nans))
    (y0, dx0, g0, nans0), (y1, dx1, g1, nans1) = results
    assert nans0.any()
    np.testing.assert_array_equal(nans1, nans0)
    np.testing.assert_allclose(y1, y0, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx1, dx0, rtol=1e-12, atol=1e-12)
    for key in g0:
        np.testing.assert_allclose(g1[key], g0[key], rtol=1e-12, atol=1e-12, err_msg=key)


def test_only_an_in_place_relu_right_after_a_convolution_or_batch_norm_is_fused():
    for first in (Conv2D(2, 3, 3), BatchNorm2D(2)):
        fused = Sequential(first, ReLU(inplace=True))
        assert fused.layers[0].fuse_relu and fused.layers[1].fused is first
    for net in (Sequential(Conv2D(2, 3, 3), ReLU()),            # the input may be read again
                Sequential(BatchNorm2D(2), ReLU()),
                Sequential(ReLU(inplace=True), Conv2D(2, 3, 3))):
        assert not any(getattr(layer, "fuse_relu", False) or getattr(layer, "fused", None)
                       for layer in net.layers)


@pytest.mark.parametrize("model, options, shape", [
    ("inception_small", {"width": 0.125, "in_channels": 1}, (2, 1, 28, 28)),
    ("googlenet", {"image_size": 80, "num_classes": 7}, (2, 3, 80, 80)),
    ("alexnet", {"image_size": 67, "width": 0.0625, "num_classes": 5}, (2, 3, 67, 67)),
    ("resnet50", {"width": 0.0625, "num_classes": 5}, (2, 3, 48, 48)),
    ("resnet20", {"width": 0.25}, (2, 3, 12, 12)),
    ("vgg16", {"image_size": 32, "width": 0.03125, "num_classes": 5}, (2, 3, 32, 32)),
])
def test_whole_models_through_the_kernels_equal_the_cpu_path(model, options, shape,
                                                              monkeypatch):
    from core.models import build_model
    x = RNG.standard_normal(shape)
    labels = RNG.integers(0, options.get("num_classes", 10), size=shape[0])
    results = []
    for use_kernels in (False, True):
        if use_kernels:
            switch_on(monkeypatch)
        net = build_model(model, options, dtype="float64", seed=3)
        for layer in net.leaves():
            if isinstance(layer, Dropout):      # its masks differ by route: off
                layer.ratio = 0.0
        loss, logits = net.forward_loss(x, labels)
        net.backward()
        results.append((loss, logits, net.grads.copy()))
    (loss0, logits0, grads0), (loss1, logits1, grads1) = results
    assert loss1 == pytest.approx(loss0, rel=1e-10)
    np.testing.assert_allclose(logits1, logits0, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(grads1, grads0, rtol=1e-8, atol=1e-11)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("make, shape, offset", [
    (lambda: LRN(), (2, 7, 5, 5), 0.0), (lambda: LRN(3, 2e-2, 0.6, 2.0), (3, 4, 3, 6), 0.0),
    (lambda: BatchNorm2D(5), (4, 5, 3, 3), 0.0),
    (lambda: BatchNorm2D(3), (6, 3, 4, 4), 300.0),     # mean^2 >> var: the recentred pass
    (lambda: BatchNorm2D(6), (5, 6), 0.0),             # (N, C): rows of one element
    (lambda: ReLU(), (3, 4, 5, 5), 0.0),
], ids=["lrn", "lrn other", "batchnorm", "batchnorm recentred", "batchnorm 2-d", "relu"])
def test_elementwise_kernel_paths_equal_the_cpu_layers(make, shape, offset, dtype, monkeypatch):
    x = RNG.standard_normal(shape) + offset
    check_layer(make, shape, monkeypatch, dtype=dtype, x=x.astype(dtype),
                scale=1 + offset / 10)   # float32 keeps 7 digits of x ~ 300: dx loses ~2


def test_batchnorm_kernel_path_in_evaluation_mode(monkeypatch):
    x = RNG.standard_normal((4, 3, 5, 5))
    dy = RNG.standard_normal(x.shape)
    results = []
    for use_kernels in (False, True):
        if use_kernels:
            switch_on(monkeypatch)
        layer = BatchNorm2D(3).build(np.float64, seed=2)
        layer.forward(x + 1.0, train=True)                # running statistics move
        y = layer.forward(x.copy(), train=False)
        results.append((y, layer.backward(dy.copy()), layer.grads["gamma"].copy()))
    for a, b in zip(*results):
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_softmax_cross_entropy_kernels(dtype, monkeypatch):
    logits = (RNG.standard_normal((7, 5)) * 4).astype(dtype)
    labels = RNG.integers(0, 5, size=7).astype(np.int32)
    host = SoftmaxCrossEntropy()
    loss, grad = host.forward(logits, labels), host.backward(0.3)
    switch_on(monkeypatch)
    kernel = SoftmaxCrossEntropy()
    tol = 1e-12 if dtype == np.float64 else 1e-5
    assert kernel.forward(logits, labels) == pytest.approx(loss, rel=tol)
    np.testing.assert_allclose(kernel.backward(0.3), grad, rtol=tol, atol=tol)
    assert kernel.accuracy(2) == host.accuracy(2)


@pytest.mark.parametrize("make", [
    lambda: SGD(momentum=0.9, weight_decay=1e-3),
    lambda: SGD(momentum=0.8, nesterov=True),
    lambda: Adagrad(eps=1e-6, weight_decay=1e-2),
], ids=["sgd", "nesterov", "adagrad"])
def test_optimizer_update_kernels(make, monkeypatch):
    params = RNG.standard_normal(50)
    grads = [RNG.standard_normal(50) for _ in range(3)]
    results = []
    for use_kernels in (False, True):
        if use_kernels:
            switch_on(monkeypatch)
        p, optimizer = params.copy(), make()
        for g in grads:
            optimizer.step(p, g, lr=0.07)
        results.append(p)
    np.testing.assert_allclose(results[1], results[0], rtol=1e-13, atol=1e-15)
    assert not np.allclose(results[0], params)


@pytest.mark.parametrize("make", [
    lambda: MaxPool2D(3, 2), lambda: AvgPool2D(3, 2, pad=1), lambda: LRN(5, 1e-2, 0.75),
    lambda: BatchNorm2D(4), lambda: ReLU(), lambda: Conv2D(4, 3, 3, pad=1),
    lambda: Conv2D(4, 5, 1)], ids=["max pool", "avg pool", "lrn", "batch norm", "relu",
                                  "conv", "conv 1x1"])
def test_the_kernel_route_keeps_channel_major_activations(make, monkeypatch):
    """What a convolution hands on (channel-major, ``layers/layout.py``) goes through every
    kernel without a layout pass: the output is channel-major too, the values the CPU's."""
    x = layout.to_channel_major(RNG.standard_normal((3, 4, 9, 9)))
    cpu = make().build(np.float64, seed=4)
    y_cpu = cpu.forward(x.copy(order="K"))
    dx_cpu = cpu.backward(layout.to_channel_major(np.ones_like(y_cpu) * 0.5))
    switch_on(monkeypatch)
    gpu = make().build(np.float64, seed=4)
    y = gpu.forward(x.copy(order="K"))
    assert layout.is_channel_major(y)
    np.testing.assert_allclose(y, y_cpu, rtol=1e-10, atol=1e-12)
    dx = gpu.backward(layout.to_channel_major(np.ones_like(y) * 0.5))
    assert layout.is_channel_major(dx)
    np.testing.assert_allclose(dx, dx_cpu, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("channel_major", [False, True])
def test_the_dropout_kernel_draws_its_mask_on_the_device(monkeypatch, channel_major):
    """One number from the layer's generator keys the kernel's draw: the mask is {0, 1/(1-r)}
    with about 1 - r kept, y = x * mask and backward applies it; the same seed gives the same
    mask, the next forward another."""
    switch_on(monkeypatch)
    x = RNG.standard_normal((40, 50, 6, 6))
    if channel_major:
        x = layout.to_channel_major(x)
    layer = Dropout(0.3, seed=7).build(np.float64)
    y = layer.forward(x)
    mask = layer.saved().mask
    assert set(np.unique(mask)) == {0.0, 1 / 0.7}
    assert abs(np.count_nonzero(mask) / mask.size - 0.7) < 0.01       # 72,000 draws
    np.testing.assert_array_equal(y, x * mask)
    assert layout.is_channel_major(y) == channel_major
    np.testing.assert_array_equal(layer.backward(np.ones(x.shape)), mask)
    again = Dropout(0.3, seed=7).build(np.float64)
    again.forward(x)
    np.testing.assert_array_equal(again.saved().mask, mask)
    layer.forward(x)
    assert (layer.saved().mask != mask).any()
