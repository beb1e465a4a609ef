"""layers/backend.py: the one place that asks where an array lives."""
import sys
import types

import numpy as np

from layers import backend


class StandIn:
    """Stands in for a CuPy array: the backend knows those by their module."""
    __module__ = "cupy._core.core"

    def __init__(self, values):
        self.values, self.dtype, self.shape = values, values.dtype, values.shape

    def get(self):
        return self.values.copy()

    def set(self, host):
        self.values[...] = host


def test_host_arrays():
    a = np.arange(6.0).reshape(2, 3)
    assert backend.array_module(a) is np and not backend.on_device(a)
    assert backend.to_host(a) is a and backend.in_memory_of(a, a) is a
    out = np.zeros((2, 3))
    assert backend.copy_into(out, a) is out
    np.testing.assert_array_equal(out, a)
    empty = backend.host_like(a[:, :2])
    assert empty.shape == (2, 2) and empty.dtype == a.dtype and not np.shares_memory(empty, a)
    assert not backend.uses_kernels(np)
    backend.synchronize(np)                    # nothing to wait for


def test_device_arrays_are_copied_across():
    gpu = StandIn(np.zeros(4))
    assert backend.on_device(gpu)
    backend.copy_into(gpu, np.arange(4.0))
    np.testing.assert_array_equal(gpu.values, np.arange(4.0))
    host = backend.to_host(gpu)
    assert isinstance(host, np.ndarray) and not np.shares_memory(host, gpu.values)
    out = np.zeros(4)
    backend.copy_into(out, gpu)
    np.testing.assert_array_equal(out, np.arange(4.0))


def test_out_of_memory_is_cupy_s_error_and_cupy_is_not_imported_for_it(monkeypatch):
    monkeypatch.delitem(sys.modules, "cupy", raising=False)
    assert not backend.out_of_memory(MemoryError("host"))
    assert "cupy" not in sys.modules

    class OutOfMemoryError(Exception):
        pass
    monkeypatch.setitem(sys.modules, "cupy", types.SimpleNamespace(
        cuda=types.SimpleNamespace(memory=types.SimpleNamespace(
            OutOfMemoryError=OutOfMemoryError))))
    assert backend.out_of_memory(OutOfMemoryError("1 GiB")) and not \
        backend.out_of_memory(RuntimeError("other"))
