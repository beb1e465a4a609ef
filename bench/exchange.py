"""BSP exchange benchmark: ``mpiexec -n 2 python bench/exchange.py [--sizes MB ...]``.

For each buffer size (float32), in the same run: plain ``MPI.Allreduce``, the ring, the
shared-memory sum on one host or the hierarchical one across hosts (on a buffer placed in
shared memory, as BSP does), the ``auto``
choice that BSP uses by default, float16 on the wire, and a ``memcpy`` (``np.copyto``) of the
same buffer. Times are medians over repeats, the methods taking turns in a shuffled order
within each round (the ranks start each call together after a barrier). Prints per size the
bus bandwidth ``2 (n - 1) / n * bytes / time`` of each method, its share of memcpy bandwidth,
and ``speedup <x>`` of ``auto`` over Allreduce.
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np
from mpi4py import MPI

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sync.exchange import Exchange   # noqa: E402

DEFAULT_SIZES_MB = [0.004, 0.016, 0.064, 0.25, 0.5, 1, 2, 4, 6.6, 16, 28, 64, 128]


def timed(comm, functions, repeats):
    """Median seconds per call of each function, the slowest rank's. The functions take turns,
    one call each per round in an order shuffled every round (the same on every rank), so
    neither the machine's drift nor what ran just before favours one of them."""
    times = {name: [] for name in functions}
    order = np.random.default_rng(0)
    for _ in range(repeats):
        for name in order.permutation(list(functions)):
            comm.Barrier()
            tick = time.perf_counter()
            functions[name]()
            times[name].append(time.perf_counter() - tick)
    return {name: comm.allreduce(float(np.median(t)), op=MPI.MAX) for name, t in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=DEFAULT_SIZES_MB,
                        help="buffer sizes in MB (10^6 bytes)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="repeats per measurement (default: more for small buffers)")
    args = parser.parse_args()
    comm = MPI.COMM_WORLD
    n = comm.Get_size()
    auto = Exchange(comm, "auto")
    in_host = [auto.in_host] if auto.in_host else []      # shared (one host) or hierarchical
    names = ["allreduce", "ring"] + in_host + ["auto", "ring-f16"]
    if comm.Get_rank() == 0:
        where = (f"{auto.in_host} from {auto.shared_min_bytes / 1e6:g} MB up, otherwise "
                 if auto.in_host else "")
        print(f"{n} ranks, {MPI.Get_library_version().splitlines()[0]}; auto = {where}"
              f"allreduce below {auto.ring_min_bytes / 1e6:g} MB, ring from there")
        print(f"{'MB':>8} {'memcpy GB/s':>11} " + " ".join(f"{m + ' GB/s':>14}" for m in names)
              + "  auto/memcpy  speedup")
    for mb in args.sizes:
        count = max(1, int(mb * 1e6 / 4))
        data = np.random.default_rng(comm.Get_rank()).standard_normal(count).astype(np.float32)
        copy = np.empty_like(data)
        repeats = args.repeats or int(np.clip(2e8 / data.nbytes, 5, 200))
        bus = 2 * (n - 1) / n * data.nbytes
        calls = {"memcpy": lambda: np.copyto(copy, data)}
        for name in names:
            exchange = Exchange(comm, "ring", "float16") if name == "ring-f16" else \
                Exchange(comm, name)
            buffer = exchange.allocate(data.size, data.dtype)   # where BSP keeps it
            buffer[...] = data
            exchange.mean(buffer)                       # warm-up (scratch buffers, connections)
            calls[name] = lambda exchange=exchange, buffer=buffer: exchange.mean(buffer)
        seconds = timed(comm, calls, repeats)
        memcpy = data.nbytes / seconds["memcpy"]
        rates = {name: bus / seconds[name] for name in names}
        if comm.Get_rank() == 0:
            print(f"{data.nbytes / 1e6:8.3f} {memcpy / 1e9:11.2f} "
                  + " ".join(f"{rates[m] / 1e9:14.2f}" for m in names)
                  + f"  {rates['auto'] / memcpy:11.2f}  speedup "
                    f"{rates['auto'] / rates['allreduce']:.2f}x", flush=True)


if __name__ == "__main__":
    main()
