"""sync/wire.py: which buffers MPI is handed for the asynchronous rules' messages, with
stand-ins for CuPy arrays and pinned memory (no GPU here)."""
import types

import numpy as np
import pytest

from core import device
from layers import backend
from sync.wire import Wire


class DeviceArray:
    """Stands in for a CuPy array (the backend knows those by their module)."""
    __module__ = "cupy.stand_in"

    def __init__(self, values):
        self.values = values
        self.shape, self.dtype, self.size = values.shape, values.dtype, values.size

    def get(self):
        return self.values.copy()

    def set(self, host):
        self.values[...] = host

    def __setitem__(self, key, value):
        self.values[key] = value.values if isinstance(value, DeviceArray) else value


class Pinned(np.ndarray):
    """Host memory from the stand-in ``pinned_empty``."""


@pytest.fixture
def gpu(monkeypatch):
    synced = []
    fake = types.SimpleNamespace(empty_like=lambda a: DeviceArray(np.empty_like(a.values)))
    monkeypatch.setattr(backend, "array_module",
                        lambda a: fake if isinstance(a, DeviceArray) else np)
    monkeypatch.setattr(backend, "synchronize", lambda xp: synced.append(xp))
    monkeypatch.setattr(device, "pinned_empty",
                        lambda n, dtype: np.empty(n, dtype).view(Pinned))
    return synced


def test_a_cuda_aware_mpi_gets_the_device_buffers(gpu):
    params = DeviceArray(np.arange(5.0))
    wire = Wire(params, aware=True)
    assert wire.outgoing("params", params) is params and gpu        # after the GPU is done
    received = wire.buffer("center", params)
    assert isinstance(received, DeviceArray)
    assert wire.where(received, params, "here") is received
    sent = wire.outgoing("copy", params, copy=True)                   # a non-blocking send
    assert isinstance(sent, DeviceArray) and sent is not params
    np.testing.assert_array_equal(sent.values, params.values)


def test_otherwise_the_messages_go_through_pinned_host_copies(gpu):
    params = DeviceArray(np.arange(5.0))
    wire = Wire(params, aware=False)
    sent = wire.outgoing("params", params)
    assert isinstance(sent, Pinned) and not gpu
    np.testing.assert_array_equal(sent, params.values)
    assert wire.outgoing("params", params) is sent                   # kept across steps
    received = wire.buffer("center", params)
    assert isinstance(received, Pinned)
    received[...] = 7.0
    here = wire.where(received, params, "here")
    assert isinstance(here, DeviceArray) and (here.values == 7.0).all()


def test_numpy_buffers_go_as_they_are():
    params = np.arange(5.0)
    wire = Wire(params)
    assert wire.direct and wire.outgoing("params", params) is params
    assert type(wire.buffer("center", params)) is np.ndarray


class RecordingComm:
    """A server's side of EASGD's exchange: records what a worker sends and answers with a
    center of 10s."""

    def __init__(self):
        self.sent = []

    def Sendrecv(self, sendbuf, dest, sendtag, recvbuf, source, recvtag):
        self.sent.append(sendbuf)
        recvbuf[...] = 10.0


@pytest.mark.parametrize("aware", [True, False])
def test_easgd_hands_mpi_what_the_wire_gives(gpu, aware):
    """A worker's elastic move: with a CUDA-aware MPI the parameters themselves are sent,
    otherwise their pinned host copy; the move is the same (NumPy arrays stand in for the
    device here, the wire told they are on one)."""
    from sync.easgd import EASGD
    rule = EASGD.__new__(EASGD)
    rule.tau, rule.alpha, rule.exchanges = 1, 0.5, 0
    rule.world = types.SimpleNamespace(comm=RecordingComm())
    model = types.SimpleNamespace(params=np.arange(4.0))
    rule.wire = Wire(model.params, aware=aware, on_device=True)
    params = model.params
    rule.after_update(model, 1)
    sent = rule.world.comm.sent[0]
    assert (sent is params) == aware and isinstance(sent, Pinned) != aware
    np.testing.assert_allclose(model.params, np.arange(4.0) - 0.5 * (np.arange(4.0) - 10.0))
