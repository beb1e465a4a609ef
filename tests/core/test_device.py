"""core/device.py on the CPU: NumPy for ``cpu``, a clear error for ``gpu`` without CuPy or
without a GPU (checked with stand-in CuPy modules), the GPU picked by local rank, TF32, the
host/device helpers."""
import sys
import types

import numpy as np
import pytest

from core import device
from core.config import load_config
from core.errors import ConfigError
from tests.mpi import ROOT


def fake_cupy(monkeypatch, count=None, error=None):
    """Install a stand-in ``cupy`` reporting ``count`` GPUs (or raising ``error``); returns the
    list of device ids made current."""
    used = []

    def get_device_count():
        if error is not None:
            raise error
        return count

    cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=get_device_count),
                                 Device=lambda i: types.SimpleNamespace(use=lambda: used.append(i)))
    monkeypatch.setitem(sys.modules, "cupy", types.SimpleNamespace(cuda=cuda))
    monkeypatch.setattr(device, "set_tf32", lambda cupy, on: used.append(("tf32", on)))
    return used


def test_cpu_is_numpy():
    assert device.array_module("cpu") is np


def test_gpu_without_cupy_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)          # import cupy raises ImportError
    with pytest.raises(device.DeviceError, match=r"needs CuPy.*pip install -e '\.\[gpu\]'"):
        device.array_module("gpu")


def test_gpu_without_a_driver_or_a_gpu(monkeypatch):
    fake_cupy(monkeypatch, error=RuntimeError("cudaErrorNoDevice"))
    with pytest.raises(device.DeviceError, match="no usable GPU.*cudaErrorNoDevice"):
        device.array_module("gpu")
    fake_cupy(monkeypatch, count=0)
    with pytest.raises(device.DeviceError, match="sees no GPU"):
        device.array_module("gpu")


def test_each_rank_takes_the_gpu_of_its_local_rank_in_turn(monkeypatch):
    used = fake_cupy(monkeypatch, count=2)
    cupy = device.array_module("gpu", rank_on_host=3, tf32=True)
    assert cupy is sys.modules["cupy"]
    assert used == [1, ("tf32", True)]


def test_device_errors_are_config_errors():
    assert issubclass(device.DeviceError, ConfigError)
    with pytest.raises(device.DeviceError, match="'tpu'"):
        device.array_module("tpu")


def test_local_rank_from_the_launcher(monkeypatch):
    for name in ("OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID", "MPI_LOCALRANKID"):
        monkeypatch.delenv(name, raising=False)
    assert device.local_rank() == 0
    monkeypatch.setenv("SLURM_LOCALID", "3")
    assert device.local_rank() == 3
    monkeypatch.setenv("OMPI_COMM_WORLD_LOCAL_RANK", "1")
    assert device.local_rank() == 1


def test_config_accepts_gpu_and_tf32_with_every_rule():
    for rule in ("BSP", "EASGD", "DOWNPOUR", "GOSSIP", "LOCAL"):
        cfg = load_config(None, ["device=gpu", "tf32=true", f"sync_rule={rule}"])
        assert cfg["device"] == "gpu" and cfg["tf32"] is True


def test_nccl_needs_the_gpu_and_no_wire_format():
    with pytest.raises(ConfigError, match="nccl averages GPU buffers: it needs device: gpu"):
        load_config(None, ["exchange.method=nccl"])
    from sync.exchange import Exchange
    with pytest.raises(ValueError, match="goes with the ring only, not 'nccl'"):
        Exchange(None, "nccl", wire="float16")


def test_training_on_gpu_without_cupy_stops_before_any_work(monkeypatch, capsys):
    from engine import train
    monkeypatch.setitem(sys.modules, "cupy", None)
    monkeypatch.setattr(train, "build_data", lambda *a: pytest.fail("data was loaded"))
    assert train.main([str(ROOT / "config.yaml"), "--set", "device=gpu"]) == 2
    assert "device: gpu needs CuPy" in capsys.readouterr().err


class FakeGpu:
    """Just enough of CuPy for DeviceFeed: device arrays that record their copies, streams and
    events that record who waited for what."""

    def __init__(self):
        self.log = []
        gpu = self

        class Event:
            def __init__(self, name):
                self.name = name

            def synchronize(self):
                gpu.log.append(("host waits", self.name))

        class Stream:
            def __init__(self, non_blocking=False):
                self.records = 0

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return False

            def record(self):
                self.records += 1
                return Event(f"copy {self.records}")

        class Array:
            def __init__(self, shape, dtype):
                self.values = np.full(shape, np.nan if np.dtype(dtype).kind == "f" else -1,
                                      dtype)

            def set(self, host, stream=None):
                assert stream is not None, "copies go on the feed's stream"
                self.values[...] = host
                gpu.log.append(("copy from", host.ctypes.data))

        compute = types.SimpleNamespace(
            wait_event=lambda event: gpu.log.append(("compute waits", event.name)))
        self.cuda = types.SimpleNamespace(Stream=Stream, get_current_stream=lambda: compute)
        self.empty = Array


def test_device_feed_copies_one_batch_ahead_through_two_pinned_buffers(monkeypatch):
    monkeypatch.setattr(device, "pinned_empty", lambda n, dtype: np.empty(n, dtype))
    rng = np.random.default_rng(0)
    host = [(rng.standard_normal((4, 3)), rng.integers(0, 9, size=4)) for _ in range(5)]
    gpu = FakeGpu()
    feed = device.feed(gpu, iter(host))
    assert gpu.log[-1][0] == "copy from"                  # the first copy starts at once
    got = []
    for x, labels in feed:
        got.append((x.values.copy(), labels.values.copy()))
    for (x, labels), (hx, hl) in zip(got, host):
        np.testing.assert_array_equal(x, hx)
        np.testing.assert_array_equal(labels, hl)
    assert len(got) == 5
    waits = [name for kind, name in gpu.log if kind == "compute waits"]
    assert waits == [f"copy {i}" for i in range(1, 6)]    # each batch waits for its own copy
    # a pinned buffer is refilled only after the host saw its previous copy finish
    refills = [name for kind, name in gpu.log if kind == "host waits"]
    assert refills == [f"copy {i}" for i in range(1, 4)]
    sources = [where for kind, where in gpu.log if kind == "copy from"]
    assert len(set(sources)) == 4                         # x and labels in two turns
    assert sources[0:2] == sources[4:6] and sources[2:4] == sources[6:8]


def test_closing_a_device_feed_closes_the_loader_stream(monkeypatch):
    monkeypatch.setattr(device, "pinned_empty", lambda n, dtype: np.empty(n, dtype))
    closed = []

    def endless():
        try:
            while True:
                yield np.zeros((2, 2)), np.zeros(2, int)
        finally:
            closed.append(True)
    feed = device.feed(FakeGpu(), endless())
    next(feed)
    feed.close()
    assert closed == [True]


def test_feed_leaves_host_batches_alone_for_numpy():
    batches = iter([(np.zeros(2), np.zeros(2, int))])
    assert device.feed(np, batches) is batches


def test_running_out_of_gpu_memory_names_the_batch_size_and_the_model(monkeypatch, capsys):
    from engine import train

    class OutOfMemoryError(Exception):
        """Stands in for CuPy's error, at the place CuPy keeps it."""

    memory = types.SimpleNamespace(OutOfMemoryError=OutOfMemoryError)
    monkeypatch.setitem(sys.modules, "cupy", types.SimpleNamespace(
        cuda=types.SimpleNamespace(memory=memory)))

    def out_of_memory(cfg):
        raise OutOfMemoryError("Out of memory allocating 1,073,741,824 bytes")
    monkeypatch.setattr(train, "train", out_of_memory)
    assert train.main([str(ROOT / "config.yaml"), "--set", "batch_size=4096"]) == 5
    err = capsys.readouterr().err
    assert "out of GPU memory" in err and "batch_size 4096 of model inception_small" in err
