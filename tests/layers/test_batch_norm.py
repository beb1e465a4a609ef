import threading

import numpy as np
import pytest

from layers import batch_norm_c
from layers import c as ckernels
from layers.batch_norm import BatchNorm2D
from layers.relu import ReLU
from layers.sequential import Sequential
from tests.gradient_check import check_backward


@pytest.fixture(autouse=True, params=["c", "numpy"])
def passes(request, monkeypatch):
    """Every test here runs on both ways of the CPU route: the C passes and NumPy's."""
    if request.param == "c":
        if not ckernels.enabled():
            pytest.skip("PT_C_KERNELS=0: the C kernels are off")
        assert batch_norm_c.library(np.float64) is not None, ckernels.status()
    monkeypatch.setattr(BatchNorm2D, "c_passes", request.param == "c")
    return request.param


def make(ch, dtype=np.float64, seed=0, block_elems=None):
    layer = BatchNorm2D(ch).build(dtype)
    rng = np.random.default_rng(seed)
    layer.params["gamma"][...] = rng.uniform(0.5, 2.0, ch)
    layer.params["beta"][...] = rng.standard_normal(ch)
    if block_elems is not None:
        layer.block_elems = block_elems
    return layer


def reference(x, gamma, beta, eps=1e-5, mean=None, var=None):
    axes = (0,) + tuple(range(2, x.ndim))
    shape = (1, -1) + (1,) * (x.ndim - 2)
    x = x.astype(np.float64)
    if mean is None:
        mean, var = x.mean(axis=axes), x.var(axis=axes)
    xhat = (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + eps)
    return xhat * gamma.reshape(shape) + beta.reshape(shape)


SHAPES = [(4, 3, 5, 6), (3, 5, 2, 3), (2, 7, 1, 1), (6, 4)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("block_elems", [None, 7])
def test_train_forward_matches_formula(shape, block_elems):
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape) * 3 + 2
    layer = make(shape[1], block_elems=block_elems)
    np.testing.assert_allclose(layer.forward(x),
                               reference(x, layer.params["gamma"], layer.params["beta"]),
                               rtol=1e-12, atol=1e-12)


def test_float32_forward():
    x = (np.random.default_rng(2).standard_normal((8, 5, 7, 7)) * 4 - 3).astype(np.float32)
    layer = make(5, np.float32)
    y = layer.forward(x)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, reference(x, layer.params["gamma"], layer.params["beta"]),
                               rtol=1e-5, atol=1e-5)


def test_large_mean_is_recentred():
    # mean / std = 1000: E[x^2] - E[x]^2 in float32 row sums would lose the variance entirely
    x = (np.random.default_rng(3).standard_normal((16, 3, 9, 9)) + 1000).astype(np.float32)
    layer = make(3, np.float32)
    y = layer.forward(x)
    np.testing.assert_allclose(y, reference(x, layer.params["gamma"], layer.params["beta"]),
                               rtol=0, atol=2e-3)
    var = x.astype(np.float64).var(axis=(0, 2, 3))
    m = x.size // 3
    np.testing.assert_allclose(layer.state["running_var"], 0.9 + 0.1 * var * m / (m - 1),
                               rtol=1e-5)


def test_running_statistics():
    rng = np.random.default_rng(4)
    layer = make(3)
    x1 = rng.standard_normal((4, 3, 5, 5)) * 2 + 1
    x2 = rng.standard_normal((4, 3, 5, 5)) - 3
    layer.forward(x1)
    layer.forward(x2)
    m = 4 * 5 * 5
    rm, rv = np.zeros(3), np.ones(3)
    for x in (x1, x2):
        rm = 0.9 * rm + 0.1 * x.mean(axis=(0, 2, 3))
        rv = 0.9 * rv + 0.1 * x.var(axis=(0, 2, 3)) * m / (m - 1)
    np.testing.assert_allclose(layer.state["running_mean"], rm, rtol=1e-12)
    np.testing.assert_allclose(layer.state["running_var"], rv, rtol=1e-12)
    # evaluation uses them and leaves them alone
    x3 = rng.standard_normal((2, 3, 4, 4))
    y = layer.forward(x3, train=False)
    np.testing.assert_allclose(y, reference(x3, layer.params["gamma"], layer.params["beta"],
                                            mean=rm, var=rv), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(layer.state["running_mean"], rm, rtol=1e-12)


def test_state_takes_the_model_dtype():
    layer = BatchNorm2D(4).build(np.float32)
    assert layer.state["running_mean"].dtype == np.float32
    layer.forward(np.ones((2, 4, 3, 3), np.float32))
    assert layer.state["running_var"].dtype == np.float32


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("block_elems", [None, 5])
def test_gradient_train(shape, block_elems):
    x = np.random.default_rng(5).standard_normal(shape) * 2 + 1
    check_backward(make(shape[1], block_elems=block_elems), x)


@pytest.mark.parametrize("shape", SHAPES)
def test_gradient_eval(shape):
    rng = np.random.default_rng(6)
    layer = make(shape[1])
    layer.state["running_mean"][...] = rng.standard_normal(shape[1])
    layer.state["running_var"][...] = rng.uniform(0.5, 2.0, shape[1])
    check_backward(layer, rng.standard_normal(shape), train=False)


def test_backward_compact_form_and_parameter_gradients():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((5, 3, 4, 4)) + 0.5
    dy = rng.standard_normal(x.shape)
    layer = make(3, block_elems=10)
    layer.forward(x)
    dx = layer.backward(dy.copy())
    mean, var = x.mean(axis=(0, 2, 3), keepdims=True), x.var(axis=(0, 2, 3), keepdims=True)
    std = np.sqrt(var + 1e-5)
    xhat, n = (x - mean) / std, 5 * 16
    gamma = layer.params["gamma"].reshape(1, 3, 1, 1)
    expect = gamma / (n * std) * (n * dy - dy.sum(axis=(0, 2, 3), keepdims=True)
                                 - xhat * (dy * xhat).sum(axis=(0, 2, 3), keepdims=True))
    np.testing.assert_allclose(dx, expect, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(layer.grads["gamma"], (dy * xhat).sum(axis=(0, 2, 3)), rtol=1e-10)
    np.testing.assert_allclose(layer.grads["beta"], dy.sum(axis=(0, 2, 3)), rtol=1e-12)
    layer.backward(dy.copy())        # gradients are overwritten, not accumulated
    np.testing.assert_allclose(layer.grads["beta"], dy.sum(axis=(0, 2, 3)), rtol=1e-12)


def test_float32_backward_matches_float64():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((16, 6, 8, 8)) * 3 + 10
    dy = rng.standard_normal(x.shape)
    l64, l32 = make(6), make(6, np.float32)
    l64.forward(x)
    dx64 = l64.backward(dy.copy())
    l32.forward(x.astype(np.float32))
    dx32 = l32.backward(dy.astype(np.float32))
    assert dx32.dtype == np.float32
    scale = np.abs(dx64).max()
    np.testing.assert_allclose(dx32, dx64, rtol=0, atol=1e-5 * scale)
    np.testing.assert_allclose(l32.grads["gamma"], l64.grads["gamma"], rtol=1e-4, atol=1e-3)


def test_bad_input():
    layer = BatchNorm2D(3).build(np.float32)
    with pytest.raises(ValueError, match=r"BatchNorm2D.*\(N, 3, \*, \*\).*\(2, 4, 5, 5\)"):
        layer.forward(np.zeros((2, 4, 5, 5), np.float32))
    with pytest.raises(ValueError, match=r"BatchNorm2D.*\(N, 3, \*, \*\).*\(2, 3, 5\)"):
        layer.forward(np.zeros((2, 3, 5), np.float32))
    with pytest.raises(ValueError, match=r"BatchNorm2D.*\(N, 3\).*\(2, 4\)"):
        layer.forward(np.zeros((2, 4), np.float32))
    with pytest.raises(TypeError, match=r"BatchNorm2D.*float64.*float32.*\(2, 3, 5, 5\)"):
        layer.forward(np.zeros((2, 3, 5, 5), np.float64))


class PairedSync:
    """Two workers' all-reduce in one process: each worker (a thread) hands in its array,
    waits for the other's, and both leave with the mean."""

    size = 2

    def __init__(self):
        self.barrier, self.arrays = threading.Barrier(2), [None, None]

    def side(self, me):
        def average(values):
            self.arrays[me] = np.array(values, copy=True)
            self.barrier.wait()
            values[...] = (self.arrays[0] + self.arrays[1]) / 2
            self.barrier.wait()                    # both have read before the next round
            return values
        average.size = 2
        return average


@pytest.mark.parametrize("route", ["cpu", "kernels"])
@pytest.mark.parametrize("shape", [(3, 4, 5, 5), (2, 3, 4, 4)])
def test_synchronized_batchnorm_is_batchnorm_over_both_workers_batches(shape, route,
                                                                       monkeypatch):
    if route == "kernels":
        from layers import backend, cuda
        from tests.layers import cuda_on_cpu
        cuda_on_cpu.compiler()
        monkeypatch.setattr(backend, "uses_kernels", lambda xp: True)
        monkeypatch.setattr(cuda, "launch", cuda_on_cpu.launch)
    rng = np.random.default_rng(8)
    xa, xb = rng.standard_normal(shape) + 3.0, rng.standard_normal(shape) * 2.0
    dya, dyb = rng.standard_normal(shape), rng.standard_normal(shape)
    ch = shape[1]
    mine, other, whole = make(ch), make(ch), make(ch)
    pair = PairedSync()
    mine.sync, other.sync = pair.side(0), pair.side(1)
    results = {}

    def worker(layer, x, dy, name):
        results[name] = layer.forward(x), layer.backward(dy.copy())
    thread = threading.Thread(target=worker, args=(other, xb, dyb, "other"))
    thread.start()
    worker(mine, xa, dya, "mine")
    thread.join()
    y, dx = results["mine"]
    y_whole = whole.forward(np.concatenate([xa, xb]))
    dx_whole = whole.backward(np.concatenate([dya, dyb]) / 2)   # the mean of both losses
    np.testing.assert_allclose(y, y_whole[:shape[0]], rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(dx, 2 * dx_whole[:shape[0]], rtol=1e-10, atol=1e-11)
    # gamma and beta: this worker's own sums, over xhat of the whole batch's statistics
    axes, shape_c = (0, 2, 3), (1, ch, 1, 1)
    xhat = (y_whole[:shape[0]] - mine.params["beta"].reshape(shape_c)) / \
        mine.params["gamma"].reshape(shape_c)
    np.testing.assert_allclose(mine.grads["beta"], dya.sum(axis=axes), rtol=1e-11)
    np.testing.assert_allclose(mine.grads["gamma"], (dya * xhat).sum(axis=axes), rtol=1e-10,
                               atol=1e-11)
    for name in ("gamma", "beta"):     # the workers' own, averaged (as BSP does): the whole's
        np.testing.assert_allclose((mine.grads[name] + other.grads[name]) / 2,
                                   whole.grads[name], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("shape", SHAPES)
def test_fused_relu_equals_the_relu_after_it(shape, train):
    """BatchNorm followed by an in-place ReLU rectifies for it and masks dy; the ReLU passes x
    and dy on. Equal to the two layers unfused."""
    rng = np.random.default_rng(11)
    x, dy = rng.standard_normal(shape) + 0.3, rng.standard_normal(shape)
    results = []
    for inplace in (True, False):             # only an in-place ReLU is fused
        net = Sequential(make(shape[1]), ReLU(inplace=inplace))
        assert net.layers[0].fuse_relu == inplace
        if not train:
            net.forward(x.copy())             # running statistics of a batch
        y = net.forward(x.copy(), train=train)
        results.append((y, net.backward(dy.copy()), net.layers[0].grads["gamma"].copy(),
                        net.layers[0].grads["beta"].copy()))
    assert (results[0][0] >= 0).all()
    for fused, plain in zip(*results):
        np.testing.assert_allclose(fused, plain, rtol=1e-12, atol=1e-13)


def test_fused_relu_gradient():
    x = np.random.default_rng(12).standard_normal((4, 3, 5, 5)) + 0.2
    check_backward(Sequential(make(3), ReLU(inplace=True)), x)


def test_fused_relu_keeps_nan():
    """A NaN in the input reaches the output through the fused ReLU (as np.maximum keeps it),
    so the step's finiteness check sees it."""
    x = np.random.default_rng(14).standard_normal((2, 3, 4, 4))
    x[1, 2, 0, 0] = np.nan
    net = Sequential(make(3), ReLU(inplace=True))
    y = net.forward(x)
    assert np.isnan(y[:, 2]).all() and np.isfinite(y[:, :2]).all()
