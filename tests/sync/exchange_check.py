"""Run under mpiexec by test_exchange.py: every exchange method against the exact mean.

Each rank fills buffers from its own seed; the expected mean is computed from every rank's
data gathered in one place. Prints ``ok <cases>`` on rank 0 when everything matched.
"""
import os
import sys
from pathlib import Path

import numpy as np
from mpi4py import MPI

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import core.device   # noqa: E402
import sync.node_memory   # noqa: E402
from layers import backend   # noqa: E402
from sync.exchange import SHARED_BLOCK, Exchange   # noqa: E402
from sync.node_memory import NodeMemoryError   # noqa: E402

comm = MPI.COMM_WORLD
rank, n = comm.Get_rank(), comm.Get_size()
SIZES = [1, 15, 16, 17, 1000, 2 * SHARED_BLOCK + 17]
cases = 0


def data(count, dtype, salt=0):
    return np.random.default_rng(1000 * salt + rank).standard_normal(count).astype(dtype)


def expected_mean(values):
    everyone = comm.allgather(values)
    return np.mean(np.stack(everyone).astype(np.float64), axis=0)


def check(got, values, dtype, what):
    global cases
    rtol = 1e-6 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(got, expected_mean(values), rtol=rtol, atol=rtol, err_msg=what)
    same = comm.allgather(got.tobytes())
    assert all(s == same[0] for s in same), f"{what}: ranks differ"
    cases += 1


for dtype in (np.float32, np.float64):
    for method in ("allreduce", "ring", "shared", "auto"):
        exchange = Exchange(comm, method, shared_min_bytes=0)
        for count in SIZES:
            values = data(count, dtype)
            plain = values.copy()                     # private memory: copied in and out
            check(exchange.mean(plain), values, dtype, f"{method} {count} {dtype.__name__}")
            shared = exchange.allocate(count, dtype)
            shared[...] = values
            in_shared = exchange.in_shared_memory(shared)
            assert in_shared == (method in ("shared", "auto")), (method, in_shared)
            check(exchange.mean(shared), values, dtype, f"{method} shared {count}")
            if count > 2:                             # a bucket [1, count - 1) of it
                before = shared.copy()
                values = data(count - 2, dtype, salt=1)
                shared[1:-1] = values
                check(exchange.mean(shared, 1, count - 1), values, dtype,
                      f"{method} bucket {count}")
                assert shared[0] == before[0] and shared[-1] == before[-1], "outside the bucket"
            summed = data(count, dtype, salt=2)
            reference = expected_mean(summed) * n
            np.testing.assert_allclose(exchange.sum(summed.copy()), reference, rtol=1e-5,
                                       atol=1e-5)

# pretend hosts, ranks dealt round-robin (6 ranks: 3 hosts x 2; fewer: 2 hosts): with more than
# one rank on some host, auto and hierarchical sum each host in shared memory, then across the
# hosts' leaders
HOSTS = 3 if n >= 6 else 2
pretend = rank % HOSTS
if n >= 3:
    for dtype in (np.float32, np.float64):
        for method in ("hierarchical", "auto"):
            exchange = Exchange(comm, method, shared_min_bytes=0, host=pretend)
            assert exchange.in_host == "hierarchical" and exchange.hosts.count == HOSTS
            for count in SIZES:
                values = data(count, dtype, salt=5)
                check(exchange.mean(values.copy()), values, dtype, f"{method} hosts {count}")
                home = exchange.allocate(count, dtype)
                assert exchange.in_shared_memory(home)
                home[...] = values
                check(exchange.mean(home), values, dtype, f"{method} hosts home {count}")
                if count > 2:
                    values = data(count - 2, dtype, salt=6)
                    home[1:-1] = values
                    check(exchange.mean(home, 1, count - 1), values, dtype,
                          f"{method} hosts bucket {count}")
            for ring_from in (0, 1 << 40):            # the leaders by ring, or by Allreduce
                exchange = Exchange(comm, method, shared_min_bytes=0, host=pretend,
                                    ring_min_bytes=ring_from)
                values = data(1000, dtype, salt=7)
                check(exchange.mean(values.copy()), values, dtype, f"{method} leaders {ring_from}")
for method, host, why in (("shared", pretend, "needs every worker on one host"),
                          ("hierarchical", 0, "needs workers on several hosts"),
                          ("hierarchical", rank, "needs workers on several hosts")):
    try:
        Exchange(comm, method, host=host)
    except ValueError as err:
        assert why in str(err) and "(use auto)" in str(err), err
    else:
        raise AssertionError(f"{method} on hosts {host} was taken")
one_each = Exchange(comm, "auto", shared_min_bytes=0, host=rank)    # a host per rank: no sharing
assert one_each.in_host is None and one_each.method_for(np.zeros(10 ** 7)) == "ring"
assert Exchange(comm, "auto", shared_min_bytes=0, host=pretend, wire="float16").method_for(
    np.zeros(10 ** 6)) == "ring"

# auto below shared_min_bytes keeps its message-based choice
auto = Exchange(comm, "auto", shared_min_bytes=4096, ring_min_bytes=1 << 40)
assert auto.method_for(np.zeros(1023, np.float32)) == "allreduce"
assert auto.method_for(np.zeros(1024, np.float32)) == "shared"
assert Exchange(comm, "auto", wire="float16").method_for(np.zeros(10 ** 6)) == "ring"



class DeviceBuffer:
    """Stands in for a CuPy buffer (the backend knows those by their module): read and written
    only by get and set. With a non-CUDA-aware MPI the exchange must stage it through host
    memory."""

    def __init__(self, values):
        self.values, self.dtype, self.size = values.copy(), values.dtype, values.size
        self.copies = 0

    def get(self, out):
        out[...] = self.values
        self.copies += 1

    def set(self, host):
        self.values[...] = host
        self.copies += 1


os.environ["PT_CUDA_AWARE"] = "0"                      # the staged path, whatever the MPI
DeviceBuffer.__module__ = "cupy.stand_in"
backend.synchronize = lambda xp: None                  # no GPU stream to wait for
backend.array_module = lambda x: np                    # and no CuPy to import
core.device.pinned_empty = lambda count, dtype: np.empty(count, dtype)
for method in ("allreduce", "ring", "shared", "auto"):
    exchange = Exchange(comm, method, shared_min_bytes=0)
    for count in (1, 1000):
        values = data(count, np.float32, salt=4)
        staged = DeviceBuffer(values)
        assert exchange.mean(staged) is staged and staged.copies == 2, staged.copies
        check(staged.values, values, np.float32, f"{method} staged {count}")

try:                                                    # NCCL takes GPU buffers only
    Exchange(comm, "nccl").mean(np.zeros(3, np.float32))
except ValueError as err:
    assert "GPU buffers only" in str(err), err
else:
    raise AssertionError("nccl averaged a host buffer")

# no shared memory: auto says so once and goes on by messages; 'shared' raises on every rank
sync.node_memory._folder = lambda: "/nonexistent/parallel-training"
auto = Exchange(comm, "auto", shared_min_bytes=0)
values = data(100, np.float32)
buffer = auto.allocate(100, np.float32)
buffer[...] = values
assert not auto.in_shared_memory(buffer) and auto.method_for(buffer) == "allreduce"
check(auto.mean(buffer), values, np.float32, "auto without shared memory")
unshared = Exchange(comm, "auto", shared_min_bytes=0)          # the copy-in path's scratch
values = data(100, np.float32, salt=3)
check(unshared.mean(values.copy()), values, np.float32, "auto, no scratch shared memory")
assert unshared.method_for(values) == "allreduce"
try:
    Exchange(comm, "shared").allocate(100, np.float32)
except NodeMemoryError as err:
    assert "rank 0 could not reserve" in str(err), err
else:
    raise AssertionError("'shared' without shared memory did not raise")
if rank == 0:
    print(f"ok {cases}")
