"""Run under mpiexec on netns hosts by test_netns.py (and by hand for bench/README.md):

    hierarchy_check.py METHOD MEGABYTES REPEATS

averages a float32 buffer of MEGABYTES per rank REPEATS times with exchange METHOD, checks the
result against the exact mean (every rank the same bits), and counts the bytes each host's
eth0 carried (received + sent, from /proc/self/net/dev, which is per network namespace) over
the timed exchanges only. Rank 0 prints one JSON line: the exchange's own description, the
bytes per host, the seconds per exchange, and the float64 sum of the result.
"""
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
from mpi4py import MPI

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from sync.exchange import Exchange   # noqa: E402


def link_bytes(interface="eth0"):
    """Bytes received + sent on ``interface`` of this process's network namespace."""
    for line in Path("/proc/self/net/dev").read_text().splitlines():
        name, _, counters = line.partition(":")
        if name.strip() == interface:
            fields = counters.split()
            return int(fields[0]) + int(fields[8])
    raise SystemExit(f"no {interface} in /proc/self/net/dev")


def main(method, megabytes, repeats):
    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    exchange = Exchange(comm, method, shared_min_bytes=0)
    values = np.random.default_rng(rank).standard_normal(int(megabytes * 1e6 / 4))
    values = values.astype(np.float32)
    expected = np.mean(comm.allgather(values.astype(np.float64)), axis=0)
    buffer = exchange.allocate(values.size, values.dtype)
    buffer[...] = values
    exchange.mean(buffer)                        # connections made, scratch allocated
    comm.Barrier()
    before, tick = link_bytes(), time.perf_counter()
    for _ in range(repeats):
        buffer[...] = values
        exchange.mean(buffer)
    comm.Barrier()
    seconds, crossed = time.perf_counter() - tick, link_bytes() - before
    np.testing.assert_allclose(buffer, expected, rtol=1e-5, atol=1e-6)
    results = comm.gather(buffer.tobytes(), root=0)
    hosts = dict(comm.allgather((platform.node(), crossed)))
    if rank == 0:
        assert all(r == results[0] for r in results), "the ranks ended with different values"
        print(json.dumps({"exchange": exchange.describe(), "bytes": hosts,
                          "buffer_bytes": buffer.nbytes, "repeats": repeats,
                          "seconds": seconds / repeats,
                          "sum": float(buffer.astype(np.float64).sum())}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]), int(sys.argv[3]))
