"""Gradient checks against central finite differences, in float64.

For a scalar probe L(x, theta) = sum(forward(x) * dy) with a fixed random ``dy``, the analytic
gradients from ``backward(dy)`` are compared with (L(v + eps*d) - L(v - eps*d)) / (2 eps) along
random directions d (the directional derivative, as Chainer's ``check_backward`` does) and,
for small arrays, element by element.
"""
import numpy as np

from layers.base import leaves


def _probe(forward, dy):
    return lambda: float(np.sum(forward() * dy))


def numeric_directional(probe, array, direction, eps):
    """(probe(array + eps d) - probe(array - eps d)) / (2 eps), restoring ``array``."""
    saved = array.copy()
    array += eps * direction
    plus = probe()
    array[...] = saved - eps * direction
    minus = probe()
    array[...] = saved
    return (plus - minus) / (2 * eps)


def _numeric_elementwise(probe, array, eps):
    grad = np.zeros_like(array)
    flat, gflat = array.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        plus = probe()
        flat[i] = old - eps
        minus = probe()
        flat[i] = old
        gflat[i] = (plus - minus) / (2 * eps)
    return grad


def check_backward(layer, x, train=True, eps=1e-6, rtol=1e-5, atol=1e-7, directions=3,
                   elementwise_max=400, seed=0, before_forward=None, params=True):
    """Assert that ``layer.backward`` matches finite differences for ``x`` and every parameter.

    ``before_forward`` is called before every forward pass (e.g. to re-seed a dropout mask).
    Arrays with at most ``elementwise_max`` entries are also checked element by element.
    """
    assert x.dtype == np.float64, "gradient checks run in float64"
    rng = np.random.default_rng(seed)
    reset = before_forward or (lambda: None)

    def forward():
        reset()
        return layer.forward(x, train=train)

    y = forward()
    dy = rng.standard_normal(y.shape)
    dx = layer.backward(dy.copy())
    analytic = {"x": (x, dx.copy())}
    if params:
        for leaf in leaves([layer]):
            for name, p in leaf.params.items():
                analytic[f"{leaf.name}.{name}#{id(p)}"] = (p, leaf.grads[name].copy())

    probe = _probe(forward, dy)
    for key, (array, grad) in analytic.items():
        assert grad.shape == array.shape, f"{key}: gradient shape {grad.shape} != {array.shape}"
        for _ in range(directions):
            d = rng.standard_normal(array.shape)
            numeric = numeric_directional(probe, array, d, eps)
            exact = float(np.sum(grad * d))
            assert abs(numeric - exact) <= atol + rtol * max(abs(numeric), abs(exact)) * 10, \
                f"{layer.name} d/d{key}: directional {exact} vs finite differences {numeric}"
        if array.size <= elementwise_max:
            numeric = _numeric_elementwise(probe, array, eps)
            np.testing.assert_allclose(grad, numeric, rtol=rtol * 10, atol=atol * 10,
                                       err_msg=f"{layer.name} d/d{key}")
