"""Parameter initializers: callables ``init(rng, array)`` that fill ``array`` in place.

fan_in / fan_out follow the usual convention for a weight of shape (out, in, *kernel):
fan_in = in * prod(kernel), fan_out = out * prod(kernel).
"""
import numpy as np


def _fans(shape):
    receptive = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    fan_out = shape[0] * receptive
    fan_in = (shape[1] if len(shape) > 1 else shape[0]) * receptive
    return fan_in, fan_out


class Constant:
    def __init__(self, value=0.0):
        self.value = value

    def __call__(self, rng, array):
        array[...] = self.value


class Gaussian:
    """N(0, std^2)."""

    def __init__(self, std=0.01):
        self.std = std

    def __call__(self, rng, array):
        array[...] = rng.normal(0.0, self.std, size=array.shape)


class He:
    """He et al. 2015: N(0, 2 / fan_in), for layers followed by ReLU."""

    def __call__(self, rng, array):
        fan_in, _ = _fans(array.shape)
        array[...] = rng.normal(0.0, np.sqrt(2.0 / fan_in), size=array.shape)


class Xavier:
    """Glorot & Bengio 2010: U(-a, a) with a = sqrt(6 / (fan_in + fan_out))."""

    def __call__(self, rng, array):
        fan_in, fan_out = _fans(array.shape)
        a = np.sqrt(6.0 / (fan_in + fan_out))
        array[...] = rng.uniform(-a, a, size=array.shape)


BY_NAME = {"he": He, "xavier": Xavier, "gaussian": Gaussian, "constant": Constant}


def get(spec):
    """An initializer from a callable, a name ('he', 'xavier') or ('gaussian', std)."""
    if callable(spec):
        return spec
    if isinstance(spec, str):
        return BY_NAME[spec]()
    name, *args = spec
    return BY_NAME[name](*args)
