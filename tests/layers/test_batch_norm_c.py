"""BatchNorm2D's C passes (layers/batch_norm_c.py) against its NumPy passes; both ways also
run every test of tests/layers/test_batch_norm.py."""
import numpy as np
import pytest

from layers import batch_norm_c
from layers import c as ckernels
from tests.layers.test_batch_norm import make


def test_c_passes_equal_numpy():
    """float32 (vector partial sums in both), statistics, dx, gradients, running variance."""
    if not ckernels.enabled():
        pytest.skip("PT_C_KERNELS=0: the C kernels are off")
    assert batch_norm_c.library(np.float32) is not None, ckernels.status()
    rng = np.random.default_rng(13)
    x = (rng.standard_normal((8, 16, 9, 9)) * 3 + 1).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    out = []
    for c in (True, False):
        layer = make(16, np.float32)
        layer.c_passes = c
        out.append((layer.forward(x.copy()), layer.backward(dy.copy()),
                    layer.grads["gamma"].copy(), layer.state["running_var"].copy()))
    for a, b in zip(*out):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5)
