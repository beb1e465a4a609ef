"""Averaging a flat buffer over the ranks of a communicator, in place: ``x <- sum_r x_r / n``.

Methods (``exchange.method``):

- ``allreduce``: ``MPI.Allreduce`` (Open MPI chooses the algorithm).
- ``ring``: reduce-scatter then allgather around a ring of point-to-point ``Sendrecv`` calls
  (Patarasuk & Yuan 2009): each rank sends and receives ``2 (n - 1) / n`` of the buffer, the
  minimum, and the sum of a chunk is done in NumPy as it arrives.
- ``auto`` (default): ``allreduce`` for buffers below ``ring_min_bytes``, ``ring`` from there
  (the threshold comes from ``bench/exchange.py`` on the 2-core machine; see bench/README.md).

``wire: float16`` halves the bytes sent by the ring: each chunk travels as float16 and is
added into the float32 (or float64) buffer, so the sum itself is carried out at full precision;
only the values on the wire are rounded. float32 stays the default everywhere.
"""
import numpy as np

METHODS = ("auto", "allreduce", "ring")
RING_MIN_BYTES = 20_000_000   # measured: bench/README.md, "bench/exchange.py"


class Exchange:
    def __init__(self, comm, method="auto", wire=None, ring_min_bytes=RING_MIN_BYTES):
        if method not in METHODS:
            raise ValueError(f"exchange method {method!r} is not one of {METHODS}")
        self.comm, self.method, self.ring_min_bytes = comm, method, ring_min_bytes
        self.wire = np.dtype(wire) if wire is not None else None
        self.size = comm.Get_size() if comm is not None else 1
        self.rank = comm.Get_rank() if comm is not None else 0
        self._scratch = {}

    def method_for(self, buffer):
        """The method used for ``buffer``: the configured one, or by size for ``auto``."""
        if self.method != "auto":
            return self.method
        if self.wire is not None:
            return "ring"
        return "ring" if buffer.nbytes >= self.ring_min_bytes else "allreduce"

    def mean(self, buffer):
        """Replace the contiguous 1-D ``buffer`` by its mean over the ranks."""
        self.sum(buffer)
        buffer *= buffer.dtype.type(1.0 / self.size)
        return buffer

    def sum(self, buffer):
        """Replace the contiguous 1-D ``buffer`` by its sum over the ranks."""
        if self.size == 1:
            return buffer
        if self.method_for(buffer) == "allreduce":
            from mpi4py import MPI
            self.comm.Allreduce(MPI.IN_PLACE, buffer, op=MPI.SUM)
        else:
            self._ring(buffer)
        return buffer

    def _buffer(self, key, n, dtype):
        scratch = self._scratch.get(key)
        if scratch is None or scratch.size < n or scratch.dtype != dtype:
            scratch = self._scratch[key] = np.empty(n, dtype)
        return scratch[:n]

    def _ring(self, buffer):
        n, rank = self.size, self.rank
        right, left = (rank + 1) % n, (rank - 1) % n
        bounds = [len(buffer) * i // n for i in range(n + 1)]
        chunk = lambda i: buffer[bounds[i % n]:bounds[i % n + 1]]   # noqa: E731
        longest = max(b - a for a, b in zip(bounds, bounds[1:]))
        wire = self.wire or buffer.dtype
        incoming = self._buffer("in", longest, wire)
        outgoing = self._buffer("out", longest, wire) if self.wire is not None else None

        def send(i):
            data = chunk(i)
            if outgoing is None:
                return data
            out = outgoing[:len(data)]
            out[...] = data
            return out

        # Reduce-scatter: after n - 1 steps rank r holds the full sum of chunk r + 1.
        for step in range(n - 1):
            target = chunk(rank - step - 1)
            received = incoming[:len(target)]
            self.comm.Sendrecv(send(rank - step), dest=right, recvbuf=received, source=left)
            target += received
        # Allgather: pass the finished chunks around the ring.
        for step in range(n - 1):
            target = chunk(rank - step)
            if self.wire is None:
                self.comm.Sendrecv(chunk(rank - step + 1), dest=right, recvbuf=target,
                                   source=left)
            else:
                received = incoming[:len(target)]
                self.comm.Sendrecv(send(rank - step + 1), dest=right, recvbuf=received,
                                   source=left)
                target[...] = received
        if self.wire is not None:   # every rank ends with the same (wire-rounded) values
            own = chunk(rank + 1)
            own[...] = own.astype(wire)
