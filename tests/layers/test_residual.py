"""The residual container and the CIFAR ResNets' padding shortcut."""
import numpy as np
import pytest

from layers import layout, parallel
from layers.base import leaves
from layers.batch_norm import BatchNorm2D
from layers.conv import Conv2D
from layers.pad_shortcut import PadShortcut
from layers.relu import ReLU
from layers.residual import Residual
from layers.sequential import Sequential
from tests.gradient_check import check_backward

RNG = np.random.default_rng(5)


def block(shortcut):
    body = Sequential(Conv2D(4, 6, 3, stride=2, pad=1, bias=False), BatchNorm2D(6),
                      ReLU(inplace=True), Conv2D(6, 6, 3, pad=1))
    return Residual(body, shortcut)


@pytest.mark.parametrize("shortcut", ["identity", "projection", "padding"])
def test_residual_gradients(shortcut):
    if shortcut == "identity":
        layer = Residual(Sequential(Conv2D(4, 4, 3, pad=1), BatchNorm2D(4), ReLU(),
                                    Conv2D(4, 4, 1)))
    else:
        layer = block(Sequential(Conv2D(4, 6, 1, stride=2, bias=False), BatchNorm2D(6))
                      if shortcut == "projection" else PadShortcut(4, 6, 2))
    check_backward(layer.build(np.float64, seed=1), RNG.standard_normal((3, 4, 6, 6)))


def test_residual_adds_the_body_and_the_shortcut():
    body = Conv2D(3, 3, 1).build(np.float64, seed=2)
    layer = Residual(body).build(np.float64, seed=2)
    x = RNG.standard_normal((2, 3, 4, 4))
    y = layer.forward(x)
    np.testing.assert_allclose(y, body.forward(x) + x, rtol=1e-13)
    with pytest.raises(ValueError, match="the body gives \\(2, 5, 4, 4\\), the shortcut "
                                         "\\(2, 3, 4, 4\\)"):
        Residual(Conv2D(3, 5, 1)).build(np.float64).forward(x)


def test_pad_shortcut_subsamples_and_pads_the_channels_on_both_sides():
    layer = PadShortcut(2, 6, 2)
    x = RNG.standard_normal((1, 2, 4, 5))
    y = layer.forward(x)
    assert y.shape == (1, 6, 2, 3)
    np.testing.assert_array_equal(y[:, 2:4], x[:, :, ::2, ::2])
    assert not y[:, :2].any() and not y[:, 4:].any()
    check_backward(PadShortcut(2, 5, 2), RNG.standard_normal((2, 2, 5, 5)))


def fused_pair(inplace, shortcut=None):
    """A residual block and the ReLU after it, fused when the ReLU is in place."""
    body = Sequential(Conv2D(4, 4, 3, pad=1), BatchNorm2D(4))
    net = Sequential(Residual(body, shortcut), ReLU(inplace=inplace)).build(np.float64, seed=3)
    assert net.layers[0].fuse_relu == inplace and (net.layers[1].fused is not None) == inplace
    return net


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("order", ["C order", "channel-major"])
def test_fused_relu_equals_the_relu_after_it(order, workers):
    """The ReLU fused into the block (forward rectifies the sum; backward masks dy as it copies
    it for the shortcut), over the blocked threaded passes (channel-major activations) and the
    whole-array ones (C order), against the block and an unfused ReLU."""
    x = RNG.standard_normal((5, 4, 7, 7))
    dy = RNG.standard_normal(x.shape)
    if order == "channel-major":
        x, dy = layout.to_channel_major(x), layout.to_channel_major(dy)
    results = []
    parallel.set_workers(workers)
    try:
        for inplace in (True, False):
            net = fused_pair(inplace)
            y = net.forward(x.copy(order="K")).copy()      # "K": the layout kept
            dx = net.backward(dy.copy(order="K"))
            results.append((y, dx, *[g.copy() for leaf in leaves([net])
                                     for g in leaf.grads.values()]))
    finally:
        parallel.set_workers(1)
    assert (results[0][0] == 0).any() and (results[0][0] > 0).any()    # both sides of the kink
    for fused, plain in zip(*results):
        np.testing.assert_allclose(fused, plain, rtol=1e-13, atol=1e-14)


def test_fused_relu_gradient():
    check_backward(fused_pair(True), RNG.standard_normal((3, 4, 6, 6)))


def test_fused_relu_keeps_nan():
    """A NaN in the sum reaches the output (as through np.maximum), where the step's
    finiteness check sees it."""
    net = fused_pair(True)
    x = RNG.standard_normal((2, 4, 5, 5))
    x[1, 2, 3, 3] = np.nan
    assert np.isnan(net.forward(x)).any()
