"""Averaging a flat buffer over the ranks of a communicator, in place: ``x <- sum_r x_r / n``.

Methods (``exchange.method``):

- ``allreduce``: ``MPI.Allreduce`` (Open MPI chooses the algorithm).
- ``ring``: reduce-scatter then allgather around a ring of point-to-point ``Sendrecv`` calls
  (Patarasuk & Yuan 2009): each rank sends and receives ``2 (n - 1) / n`` of the buffer, the
  minimum, and the sum of a chunk is done in NumPy as it arrives.
- ``shared``: for ranks that all run on one host. Every rank's buffer lives in memory all of
  them map (``sync/node_memory.py``): ``allocate`` makes it there, and the model binds its
  flat buffer to it from the start (``SyncRule.allocate``). Between two barriers,
  rank r sums its 1/n of the buffer straight from the n buffers, in cache-sized blocks, and
  writes the result into all n: each rank reads and writes the buffer's size once, as a memcpy
  does, where a message-based all-reduce copies every byte into and out of a transfer buffer
  as well. A buffer not in shared memory is copied in and out (correct, but slower).
- ``nccl``: GPU buffers only (``device: gpu``), NVIDIA's NCCL all-reduce through
  ``cupy.cuda.nccl``, on the compute stream; rank 0 makes the communicator's id and MPI
  broadcasts it. NCCL wants one GPU per rank.
- ``auto`` (default): ``shared`` from ``shared_min_bytes`` up when the ranks share one host
  (and NumPy buffers), otherwise ``allreduce`` for buffers below ``ring_min_bytes`` and
  ``ring`` from there (thresholds measured with ``bench/exchange.py`` on the 2-core machine;
  see bench/README.md).

GPU buffers (CuPy, ``device: gpu``): once the GPU has finished the work queued on it, a
CUDA-aware MPI (``sync.comm.cuda_aware``) reduces the device buffer itself (``allreduce``, or
the ring with its sums on the GPU); any other MPI gets a copy in pinned host memory, averaged
like a host buffer (the shared path included) and copied back.

``wire: float16`` halves the bytes sent by the ring: each chunk travels as float16 and is
added into the float32 (or float64) buffer, so the sum itself is carried out at full precision;
only the values on the wire are rounded. float32 stays the default everywhere.
"""
import numpy as np

from core import device
from layers import backend
from sync.comm import cuda_aware, ranks_on_this_host
from sync.node_memory import NodeBuffers, NodeMemoryError

METHODS = ("auto", "allreduce", "ring", "shared", "nccl")
RING_MIN_BYTES = 20_000_000   # measured: bench/README.md, "bench/exchange.py"
SHARED_MIN_BYTES = 65_536     # measured likewise
SHARED_BLOCK = 65_536         # elements summed at a time: 256 KB of float32 stays in L2


class Exchange:
    def __init__(self, comm, method="auto", wire=None, ring_min_bytes=RING_MIN_BYTES,
                 shared_min_bytes=SHARED_MIN_BYTES):
        """Collective over ``comm`` (None: one process)."""
        if method not in METHODS:
            raise ValueError(f"exchange method {method!r} is not one of {METHODS}")
        self.comm, self.method, self.ring_min_bytes = comm, method, ring_min_bytes
        self.shared_min_bytes = shared_min_bytes
        self.wire = np.dtype(wire) if wire is not None else None
        self.size = comm.Get_size() if comm is not None else 1
        self.rank = comm.Get_rank() if comm is not None else 0
        self._set_one_host(self.size == 1 or ranks_on_this_host(comm) == self.size)
        if comm is not None:
            from mpi4py import MPI
            self._mpi = MPI
        if method == "shared" and not self.one_host:
            raise ValueError("exchange.method 'shared' needs every worker on one host; these "
                             f"{self.size} workers span several (use auto, allreduce or ring)")
        if method in ("shared", "nccl") and self.wire is not None:
            raise ValueError(f"exchange.wire {self.wire.name} goes with the ring only, not "
                             f"{method!r}")
        self._scratch = {}
        self._homes = {}              # id of a buffer allocate() made -> its NodeBuffers
        self._cuda_aware = None       # asked of the MPI library at the first GPU buffer
        self._nccl = None             # the NCCL communicator, made at the first exchange

    def _set_one_host(self, value):
        """``one_host``, and ``auto``'s thresholds from it, so that ``method_for`` costs two
        comparisons (it runs on every exchange, also of buffers that take microseconds)."""
        self.one_host = value
        self._shared_from = self.shared_min_bytes if value and self.wire is None else np.inf
        self._ring_from = 0 if self.wire is not None else self.ring_min_bytes

    def method_for(self, buffer):
        """The method used for ``buffer``: the configured one, or by size for ``auto``."""
        if self.method != "auto":
            return self.method
        nbytes = buffer.nbytes
        if nbytes >= self._shared_from and not backend.on_device(buffer):
            return "shared"
        return "ring" if nbytes >= self._ring_from else "allreduce"

    def allocate(self, count, dtype):
        """A flat host buffer of ``count`` elements of ``dtype`` for ``mean`` to average: in
        memory every rank on this host maps when ``mean`` of it takes the shared path,
        otherwise plain memory. Collective. Where shared memory cannot be made, ``auto`` goes
        on without it (the reason printed once); ``shared`` raises."""
        buffer = np.empty(count, dtype)
        if self.size == 1 or self.method_for(buffer) != "shared":
            return buffer
        try:
            buffers = NodeBuffers(self.comm, count, dtype)
        except NodeMemoryError as err:
            self._do_without_shared_memory(err)
            return buffer
        self._homes[id(buffers.mine)] = buffers     # kept alive by buffers: the id stays its
        return buffers.mine

    def in_shared_memory(self, buffer):
        """Whether ``buffer`` is one that ``allocate`` placed in shared memory."""
        return id(buffer) in self._homes

    def _do_without_shared_memory(self, err):
        """``shared`` re-raises ``err``; ``auto`` says so once and averages by messages from
        now on (every rank got the same error, so all switch together)."""
        if self.method == "shared":
            raise err
        self._set_one_host(False)
        if self.rank == 0:
            print(f"exchange: no shared memory ({err}); averaging by messages instead",
                  flush=True)

    def mean(self, buffer, lo=0, hi=None):
        """Replace ``buffer[lo:hi]`` (of a contiguous 1-D ``buffer``: a bucket of it, or all)
        by its mean over the ranks; returns that part."""
        return self._reduce(buffer, 1.0 / self.size, lo, hi)

    def sum(self, buffer, lo=0, hi=None):
        """Replace ``buffer[lo:hi]`` by its sum over the ranks."""
        return self._reduce(buffer, None, lo, hi)

    def _reduce(self, buffer, scale, lo=0, hi=None):
        home = self._homes.get(id(buffer))
        buffer = buffer[lo:hi] if lo or hi is not None else buffer
        if self.size == 1:
            return buffer
        if backend.on_device(buffer):
            return self._reduce_device(buffer, scale)
        if self.method == "nccl":
            raise ValueError("exchange.method nccl averages GPU buffers only (device: gpu)")
        if home is not None:                      # in shared memory: summed in place there
            self._reduce_in_place(home, lo, buffer.size, scale)
            return buffer
        method = self.method_for(buffer)
        if method == "shared":
            return self._sum_shared(buffer, scale)
        if method == "allreduce":
            self.comm.Allreduce(self._mpi.IN_PLACE, buffer, op=self._mpi.SUM)
        else:
            self._ring(buffer)
        if scale is not None:
            buffer *= buffer.dtype.type(scale)
        return buffer

    def _reduce_device(self, buffer, scale):
        """A GPU buffer: by NCCL if asked, in place through a CUDA-aware MPI, else through
        pinned host memory."""
        if self.method == "nccl":
            self._nccl_sum(buffer)
            if scale is not None:
                buffer *= buffer.dtype.type(scale)
            return buffer
        backend.synchronize(backend.array_module(buffer))
        if self._cuda_aware is None:
            self._cuda_aware = cuda_aware()[0]
        if self._cuda_aware:
            if self.method == "ring" or self.wire is not None:
                self._ring(buffer)
            else:
                self.comm.Allreduce(self._mpi.IN_PLACE, buffer, op=self._mpi.SUM)
            if scale is not None:
                buffer *= buffer.dtype.type(scale)
            return buffer
        host = self._scratch.get("pinned")
        if host is None or host.size < buffer.size or host.dtype != buffer.dtype:
            host = self._scratch["pinned"] = device.pinned_empty(buffer.size, buffer.dtype)
        host = host[:buffer.size]
        buffer.get(out=host)
        self._reduce(host, scale)
        buffer.set(host)
        return buffer

    def _nccl_sum(self, buffer):
        """NCCL's in-place all-reduce (sum) of the contiguous GPU ``buffer``, queued on the
        current stream like the kernels that computed it."""
        import cupy
        from cupy.cuda import nccl
        if self._nccl is None:
            uid = self.comm.bcast(nccl.get_unique_id() if self.rank == 0 else None, root=0)
            self._nccl = nccl.NcclCommunicator(self.size, uid, self.rank)
        kind = {np.dtype(np.float32): nccl.NCCL_FLOAT32, np.dtype(np.float64): nccl.NCCL_FLOAT64}
        self._nccl.allReduce(buffer.data.ptr, buffer.data.ptr, buffer.size,
                             kind[np.dtype(buffer.dtype)], nccl.NCCL_SUM,
                             cupy.cuda.get_current_stream().ptr)

    def _buffer(self, key, n, dtype, xp=np):
        key = (key, xp.__name__)
        scratch = self._scratch.get(key)
        if scratch is None or scratch.size < n or scratch.dtype != dtype:
            scratch = self._scratch[key] = xp.empty(n, dtype)
        return scratch[:n]

    def _sum_shared(self, buffer, scale=None):
        """The ``shared`` method for a buffer ``allocate`` did not place: copied into shared
        scratch memory and back; ``scale`` multiplies the sum on the way (for ``mean``)."""
        try:
            buffers = self._shared_scratch(buffer.size, buffer.dtype)
        except NodeMemoryError as err:
            self._do_without_shared_memory(err)
            return self._reduce(buffer, scale)
        buffers.mine[:buffer.size] = buffer
        self._reduce_in_place(buffers, 0, buffer.size, scale)
        buffer[...] = buffers.mine[:buffer.size]
        return buffer

    def _shared_scratch(self, count, dtype):
        scratch = self._scratch.get("shared")
        if scratch is None or scratch.mine.size < count or scratch.dtype != dtype:
            scratch = self._scratch["shared"] = NodeBuffers(self.comm, count, dtype)
        return scratch

    def _reduce_in_place(self, buffers, offset, count, scale):
        """Every rank's ``[offset, offset + count)`` of ``buffers`` becomes the sum of all.

        Rank r owns a 1/n share, cut at multiples of 16 elements from the page-aligned start,
        so that no two ranks write one cache line; the barriers make sure every buffer is final
        before anyone reads, and every share written before anyone goes on. That stores before
        the barrier are seen by the other ranks after it relies on the barrier's memory fences
        (an MPI window's ``Win.Sync`` would say so formally; x86 keeps stores in order anyway).
        """
        n, rank = self.size, self.rank
        cuts = [offset] + [max(offset, (offset + count * i // n) // 16 * 16)
                           for i in range(1, n)] + [offset + count]
        block = self._buffer("block", SHARED_BLOCK, buffers.dtype)
        factor = buffers.dtype.type(scale) if scale is not None else None
        arrays = buffers.arrays
        self.comm.Barrier()
        for lo in range(cuts[rank], cuts[rank + 1], SHARED_BLOCK):
            hi = min(lo + SHARED_BLOCK, cuts[rank + 1])
            total = block[:hi - lo]
            np.add(arrays[0][lo:hi], arrays[1][lo:hi], out=total)
            for other in arrays[2:]:
                total += other[lo:hi]
            if factor is not None:
                total *= factor
            for array in arrays:
                array[lo:hi] = total
        self.comm.Barrier()

    def _ring(self, buffer):
        n, rank = self.size, self.rank
        right, left = (rank + 1) % n, (rank - 1) % n
        bounds = [len(buffer) * i // n for i in range(n + 1)]
        chunk = lambda i: buffer[bounds[i % n]:bounds[i % n + 1]]   # noqa: E731
        longest = max(b - a for a, b in zip(bounds, bounds[1:]))
        wire, xp = self.wire or buffer.dtype, backend.array_module(buffer)
        incoming = self._buffer("in", longest, wire, xp)
        outgoing = self._buffer("out", longest, wire, xp) if self.wire is not None else None

        def send(i):
            data = chunk(i)
            if outgoing is None:
                return data
            out = outgoing[:len(data)]
            out[...] = data
            backend.synchronize(xp)   # MPI reads ``out`` once the GPU has written it
            return out

        # Reduce-scatter: after n - 1 steps rank r holds the full sum of chunk r + 1.
        for step in range(n - 1):
            target = chunk(rank - step - 1)
            received = incoming[:len(target)]
            self.comm.Sendrecv(send(rank - step), dest=right, recvbuf=received, source=left)
            target += received
            backend.synchronize(xp)   # the next send may read this sum: it must be done
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
