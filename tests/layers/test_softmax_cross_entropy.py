import numpy as np
import pytest

from layers.softmax_cross_entropy import SoftmaxCrossEntropy


def direct_loss(logits, labels):
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return -np.mean(np.log(p[np.arange(len(labels)), labels]))


def test_loss_matches_the_direct_formula():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((6, 5)) * 3
    labels = rng.integers(0, 5, 6)
    layer = SoftmaxCrossEntropy()
    assert layer.forward(logits, labels) == pytest.approx(direct_loss(logits, labels), rel=1e-12)
    np.testing.assert_allclose(layer.probs.sum(axis=1), 1.0, rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_huge_logits_are_stable(dtype):
    logits = np.array([[1e4, 0.0, -1e4], [1e4, 1e4 - 1, 0.0], [-3e4, -3e4, -3e4]], dtype=dtype)
    labels = np.array([0, 1, 2])
    layer = SoftmaxCrossEntropy()
    loss = layer.forward(logits, labels)
    # -log p = logsumexp(z - z_label) per row: 0, log(1 + e), log 3 (e^-1e4 vanishes)
    expect = (0.0 + np.log1p(np.e) + np.log(3.0)) / 3
    assert loss == pytest.approx(expect, rel=1e-6)
    worst = layer.forward(logits[:1], np.array([2]))
    assert worst == pytest.approx(2e4, rel=1e-6)
    assert np.isfinite(layer.backward()).all()


def test_gradient_matches_finite_differences_and_the_formula():
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((4, 7)) * 2
    labels = rng.integers(0, 7, 4)
    layer = SoftmaxCrossEntropy()
    layer.forward(logits, labels)
    grad = layer.backward(scale=0.3)
    numeric = np.zeros_like(logits)
    eps = 1e-6
    for i in np.ndindex(logits.shape):
        z = logits.copy()
        z[i] += eps
        plus = layer.forward(z, labels)
        z[i] -= 2 * eps
        numeric[i] = 0.3 * (plus - layer.forward(z, labels)) / (2 * eps)
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-9)
    layer.forward(logits, labels)
    onehot = np.eye(7)[labels]
    np.testing.assert_allclose(layer.backward(scale=0.3), 0.3 * (layer.probs - onehot) / 4,
                               rtol=1e-12)
    np.testing.assert_allclose(layer.backward(), (layer.probs - onehot) / 4, rtol=1e-12)


def test_float32_keeps_dtype():
    logits = np.random.default_rng(2).standard_normal((3, 4)).astype(np.float32)
    layer = SoftmaxCrossEntropy()
    layer.forward(logits, np.array([0, 1, 3], dtype=np.int32))
    assert layer.probs.dtype == np.float32 and layer.backward().dtype == np.float32


def test_accuracy():
    logits = np.array([[5.0, 1.0, 2.0, 0.0],
                       [0.0, 3.0, 2.0, 1.0],
                       [0.0, 1.0, 2.0, 3.0],
                       [1.0, 0.0, 3.0, 2.0]])
    layer = SoftmaxCrossEntropy()
    layer.forward(logits, np.array([0, 2, 3, 1]))
    # ranks of the labels: 0, 1, 0, 3
    assert layer.accuracy() == 0.5
    assert layer.accuracy(2) == 0.75
    assert layer.accuracy(4) == 1.0


def test_bad_input():
    layer = SoftmaxCrossEntropy()
    logits = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match=r"SoftmaxCrossEntropy.*\(3,\).*\(3, 4\).*\(2,\)"):
        layer.forward(logits, np.array([0, 1]))
    with pytest.raises(TypeError, match=r"SoftmaxCrossEntropy.*integer.*float64"):
        layer.forward(logits, np.array([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match=r"SoftmaxCrossEntropy.*\[0, 4\).*\[0, 4\]"):
        layer.forward(logits, np.array([0, 4, 1]))
    with pytest.raises(ValueError, match=r"SoftmaxCrossEntropy.*\(N, \*\).*\(3, 4, 1\)"):
        layer.forward(np.zeros((3, 4, 1), np.float32), np.array([0, 1, 2]))
    with pytest.raises(TypeError, match=r"SoftmaxCrossEntropy.*int64"):
        layer.forward(np.zeros((3, 4), np.int64), np.array([0, 1, 2]))
