"""Every layer's forward and backward on CuPy equals NumPy: float64 to 1e-10 (relative), float32
to 1e-4 relative and 1e-5 absolute (cuBLAS sums in another order; TF32 stays off here)."""
import numpy as np
import pytest

from layers.avg_pool import AvgPool2D
from layers.batch_norm import BatchNorm2D
from layers.concat import Concat
from layers.conv import Conv2D
from layers.dropout import Dropout
from layers.flatten import Flatten
from layers.global_avg_pool import GlobalAvgPool
from layers.inception import Inception, InceptionSmall
from layers.linear import Linear
from layers.lrn import LRN
from layers.max_pool import MaxPool2D
from layers.relu import ReLU
from layers.softmax_cross_entropy import SoftmaxCrossEntropy

TOLERANCE = {np.float64: (1e-10, 1e-12), np.float32: (1e-4, 1e-5)}

LAYERS = [  # (id, factory, input shape)
    ("conv3x3", lambda: Conv2D(3, 8, 3, pad=1), (4, 3, 9, 9)),
    ("conv7x7/2", lambda: Conv2D(3, 8, 7, stride=2, pad=3), (2, 3, 16, 16)),
    ("conv5x5/2 no bias", lambda: Conv2D(4, 6, 5, stride=2, pad=2, bias=False), (3, 4, 11, 11)),
    ("conv1x1", lambda: Conv2D(6, 5, 1), (3, 6, 7, 7)),
    ("maxpool ceil", lambda: MaxPool2D(3, 2), (2, 3, 8, 8)),
    ("maxpool pad", lambda: MaxPool2D(3, 1, pad=1), (2, 3, 7, 7)),
    ("avgpool", lambda: AvgPool2D(5, 3), (2, 4, 14, 14)),
    ("global avgpool", GlobalAvgPool, (3, 5, 7, 7)),
    ("relu", ReLU, (2, 3, 5, 5)),
    ("lrn", LRN, (2, 7, 6, 6)),
    ("linear", lambda: Linear(12, 7), (5, 12)),
    ("batchnorm", lambda: BatchNorm2D(4), (6, 4, 5, 5)),
    ("flatten", Flatten, (2, 3, 4, 4)),
    ("concat", lambda: Concat(Conv2D(3, 2, 1), ReLU(), MaxPool2D(3, 1, 1)), (2, 3, 6, 6)),
    ("inception", lambda: Inception(8, 4, 3, 5, 2, 3, 2), (2, 8, 7, 7)),
    ("inception small", lambda: InceptionSmall(6, 4, 5), (3, 6, 8, 8)),
]


def run(layer, xp, x, dy, dtype):
    layer.build(dtype, seed=7, xp=xp)
    y = layer.forward(xp.asarray(x), train=True)
    dx = layer.backward(xp.asarray(dy))
    return y, dx, {k: g.copy() for k, g in layer.grads.items()}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name, make, shape", LAYERS, ids=[entry[0] for entry in LAYERS])
def test_layer_on_cupy_equals_numpy(cupy, name, make, shape, dtype):
    rng = np.random.default_rng(3)
    x = rng.standard_normal(shape).astype(dtype)
    y_shape = make().build(dtype, seed=7).forward(x.copy()).shape
    dy = rng.standard_normal(y_shape).astype(dtype)
    host = run(make(), np, x.copy(), dy.copy(), dtype)
    device = run(make(), cupy, x.copy(), dy.copy(), dtype)
    rtol, atol = TOLERANCE[dtype]
    for what, a, b in (("y", host[0], device[0]), ("dx", host[1], device[1])):
        assert type(b) is cupy.ndarray, f"{name}: {what} left the GPU"
        np.testing.assert_allclose(cupy.asnumpy(b), a, rtol=rtol, atol=atol, err_msg=what)
    for key in host[2]:
        np.testing.assert_allclose(cupy.asnumpy(device[2][key]), host[2][key], rtol=rtol,
                                   atol=atol, err_msg=key)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_softmax_cross_entropy_on_cupy_equals_numpy(cupy, dtype):
    rng = np.random.default_rng(4)
    logits = (rng.standard_normal((9, 11)) * 5).astype(dtype)
    labels = rng.integers(0, 11, size=9)
    host, device = SoftmaxCrossEntropy(), SoftmaxCrossEntropy()
    loss = host.forward(logits, labels)
    loss_gpu = device.forward(cupy.asarray(logits), cupy.asarray(labels))
    rtol, atol = TOLERANCE[dtype]
    assert float(loss_gpu) == pytest.approx(loss, rel=rtol)
    np.testing.assert_allclose(cupy.asnumpy(device.backward(0.5)), host.backward(0.5),
                               rtol=rtol, atol=atol)


def test_dropout_draws_its_mask_on_the_gpu(cupy):
    """The mask comes from the device (one key from the layer's generator): {0, 1/(1-r)},
    about 1 - r kept, y = x * mask, and backward applies it."""
    layer = Dropout(0.4, seed=1).build(np.float32, xp=cupy)
    x = cupy.asarray(np.random.default_rng(2).standard_normal((64, 32, 8, 8)), np.float32)
    y = layer.forward(x)
    mask = cupy.asnumpy(layer.saved().mask)
    assert set(np.unique(mask)) <= {0.0, np.float32(1 / 0.6)}
    assert abs(np.count_nonzero(mask) / mask.size - 0.6) < 0.01
    np.testing.assert_allclose(cupy.asnumpy(y), cupy.asnumpy(x) * mask, rtol=1e-6)
    np.testing.assert_allclose(cupy.asnumpy(layer.backward(cupy.ones_like(x))), mask)
