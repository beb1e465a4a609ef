"""Averaging a flat buffer over the ranks of a communicator, in place: ``x <- sum_r x_r / n``.

Methods (``exchange.method``):

- ``allreduce``: ``MPI.Allreduce`` (Open MPI chooses the algorithm).
- ``ring``: reduce-scatter then allgather around a ring of point-to-point ``Sendrecv`` calls
  (``sync/ring.py``, Patarasuk & Yuan 2009): each rank sends and receives ``2 (n - 1) / n`` of
  the buffer, the minimum, and the sum of a chunk is done in NumPy as it arrives.
- ``shared``: for ranks that all run on one host. Every rank's buffer lives in memory all of
  them map (``sync/node_memory.py``): ``allocate`` makes it there, and the model binds its
  flat buffer to it from the start (``SyncRule.allocate``). Between two barriers,
  rank r sums its 1/n of the buffer straight from the n buffers, in cache-sized blocks, and
  writes the result into all n: each rank reads and writes the buffer's size once, as a memcpy
  does, where a message-based all-reduce copies every byte into and out of a transfer buffer
  as well. A buffer not in shared memory is copied in and out (correct, but slower).
- ``hierarchical``: for ranks on several hosts (``sync/hosts.py``, as Horovod's hierarchical
  allreduce): the ranks of each host sum into their leader's buffer in shared memory, the
  leaders (one per host) sum across hosts by the ring (the fewest bytes on each link; see
  bench/README.md for Open MPI's Allreduce there), and every rank copies the result from its
  leader's buffer. Only the leaders'
  all-reduce crosses the network: with k ranks on each of H hosts, each host's link carries
  ``2 (H - 1) / H`` of the buffer each way, where a flat ring over ranks placed round-robin
  carries k times that.
- ``nccl``: GPU buffers only (``device: gpu``), NVIDIA's NCCL all-reduce through
  ``cupy.cuda.nccl``, on the compute stream; rank 0 makes the communicator's id and MPI
  broadcasts it. NCCL wants one GPU per rank.
- ``auto`` (default): for NumPy buffers from ``shared_min_bytes`` up, ``shared`` when the ranks
  share one host and ``hierarchical`` when they span hosts with more than one rank on some
  host; otherwise ``allreduce`` for buffers below ``ring_min_bytes`` and ``ring`` from there
  (thresholds measured with ``bench/exchange.py`` on the 2-core machine; see bench/README.md).
  With ``wire`` set, ``auto`` keeps to the flat ring, the one path that carries it.

GPU buffers (CuPy, ``device: gpu``): once the GPU has finished the work queued on it, a
CUDA-aware MPI (``sync.comm.cuda_aware``) reduces the device buffer itself (``allreduce``, or
the ring with its sums on the GPU); any other MPI gets a copy in pinned host memory, averaged
like a host buffer (the shared and hierarchical paths included) and copied back.

``wire: float16`` halves the bytes sent by the ring: each chunk travels as float16 and is
added into the float32 (or float64) buffer, so the sum itself is carried out at full precision;
only the values on the wire are rounded. float32 stays the default everywhere.
"""
import numpy as np

from core import device
from layers import backend
from sync.comm import cuda_aware
from sync.hosts import Hosts, sum_shares
from sync.node_memory import NodeBuffers, NodeMemoryError
from sync.ring import ring_sum

METHODS = ("auto", "allreduce", "ring", "shared", "hierarchical", "nccl")
IN_HOST_MEMORY = ("shared", "hierarchical")     # the methods that sum in shared memory
RING_MIN_BYTES = 20_000_000   # measured: bench/README.md, "bench/exchange.py"
SHARED_MIN_BYTES = 65_536     # measured likewise
SHARED_BLOCK = 65_536         # elements summed at a time: 256 KB of float32 stays in L2


class Exchange:
    def __init__(self, comm, method="auto", wire=None, ring_min_bytes=RING_MIN_BYTES,
                 shared_min_bytes=SHARED_MIN_BYTES, host=None):
        """Collective over ``comm`` (None: one process); ``host`` (tests): pretend the ranks
        run on the hosts this key names (``sync.hosts.Hosts``)."""
        if method not in METHODS:
            raise ValueError(f"exchange method {method!r} is not one of {METHODS}")
        self.comm, self.method, self.ring_min_bytes = comm, method, ring_min_bytes
        self.shared_min_bytes = shared_min_bytes
        self.wire = np.dtype(wire) if wire is not None else None
        self.size = comm.Get_size() if comm is not None else 1
        self.rank = comm.Get_rank() if comm is not None else 0
        self.hosts = Hosts(comm, host) if self.size > 1 else None
        self._set_in_host_method(self._topology_method())
        if comm is not None:
            from mpi4py import MPI
            self._mpi = MPI
        if method in IN_HOST_MEMORY + ("nccl",) and self.wire is not None:
            raise ValueError(f"exchange.wire {self.wire.name} goes with the ring only, not "
                             f"{method!r}")
        self._scratch = {}
        self._homes = {}              # id of a buffer allocate() made -> its NodeBuffers
        self._cuda_aware = None       # asked of the MPI library at the first GPU buffer
        self._nccl = None             # the NCCL communicator, made at the first exchange

    def _topology_method(self):
        """'shared' (one host), 'hierarchical' (several, some with more than one rank) or
        None (one rank per host), checked against an explicit ``method``."""
        hosts = self.hosts
        found = "shared" if hosts is None or hosts.count == 1 else \
            "hierarchical" if hosts.most > 1 else None
        if self.method in IN_HOST_MEMORY and found != self.method and self.size > 1:
            where = hosts.describe() if hosts is not None else "one process"
            need = "every worker on one host" if self.method == "shared" else \
                "workers on several hosts, more than one on some host"
            raise ValueError(f"exchange.method {self.method!r} needs {need}; these "
                             f"{self.size} workers run on {where} (use auto)")
        return found

    def _set_in_host_method(self, method):
        """The shared-memory method ``auto`` may take (None: none), and its thresholds, so that
        ``method_for`` costs two comparisons (it runs on every exchange, also of buffers that
        take microseconds)."""
        self.in_host = method
        self._in_host_from = self.shared_min_bytes \
            if method is not None and self.wire is None else np.inf
        self._ring_from = 0 if self.wire is not None else self.ring_min_bytes

    @property
    def one_host(self):
        return self.hosts is None or self.hosts.count == 1

    def method_for(self, buffer):
        """The method used for ``buffer``: the configured one, or by size for ``auto``."""
        if self.method != "auto":
            return self.method
        nbytes = buffer.nbytes
        if nbytes >= self._in_host_from and not backend.on_device(buffer):
            return self.in_host
        return "ring" if nbytes >= self._ring_from else "allreduce"

    def describe(self):
        """The method, and for ``auto`` what it picks by size, in words (the start line)."""
        where = self.hosts.describe() if self.hosts is not None else "one process"
        if self.method != "auto":
            return f"{self.method} ({where})"
        messages = "ring" if self.wire is not None else \
            f"allreduce below {self.ring_min_bytes:,} bytes, ring from there"
        if self._in_host_from == np.inf:
            return f"auto: {messages} ({where})"
        return f"auto: {self.in_host} from {self.shared_min_bytes:,} bytes, else {messages} " \
               f"({where})"

    def _host_comm(self):
        """The ranks whose buffers one ``NodeBuffers`` holds: all (shared) or this host's."""
        return self.comm if self.in_host == "shared" else self.hosts.local

    def allocate(self, count, dtype):
        """A flat host buffer of ``count`` elements of ``dtype`` for ``mean`` to average: in
        memory every rank on this host maps when ``mean`` of it sums in shared memory,
        otherwise plain memory. Collective. Where shared memory cannot be made, ``auto`` goes
        on without it (the reason printed once); ``shared`` and ``hierarchical`` raise."""
        buffer = np.empty(count, dtype)
        if self.size == 1 or self.method_for(buffer) not in IN_HOST_MEMORY:
            return buffer
        try:
            buffers = NodeBuffers(self._host_comm(), count, dtype)
        except NodeMemoryError as err:
            self._do_without_shared_memory(err)
            return buffer
        self._homes[id(buffers.mine)] = buffers     # kept alive by buffers: the id stays its
        return buffers.mine

    def in_shared_memory(self, buffer):
        """Whether ``buffer`` is one that ``allocate`` placed in shared memory."""
        return id(buffer) in self._homes

    def _do_without_shared_memory(self, err):
        """``shared``/``hierarchical`` re-raise ``err``; ``auto`` says so once and averages by
        messages from now on (every rank got the same error, so all switch together)."""
        if self.method in IN_HOST_MEMORY:
            raise err
        self._set_in_host_method(None)
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
        if method in IN_HOST_MEMORY:
            return self._sum_in_scratch(buffer, scale)
        self._sum_messages(buffer, self.comm, method)
        if scale is not None:
            buffer *= buffer.dtype.type(scale)
        return buffer

    def _sum_messages(self, buffer, comm, method):
        """``buffer`` summed over ``comm`` by ``method``: 'allreduce' or 'ring'."""
        if method == "allreduce":
            comm.Allreduce(self._mpi.IN_PLACE, buffer, op=self._mpi.SUM)
        else:
            ring_sum(comm, buffer, self.wire, self._buffer)

    def _reduce_device(self, buffer, scale):
        """A GPU buffer: by NCCL if asked, in place through a CUDA-aware MPI, else through
        pinned host memory."""
        if self.method == "nccl":
            self._nccl_sum(buffer)
        else:
            backend.synchronize(backend.array_module(buffer))
            if self._cuda_aware is None:
                self._cuda_aware = cuda_aware()[0]
            if not self._cuda_aware:
                return self._reduce_through_host(buffer, scale)
            ring = self.method == "ring" or self.wire is not None
            self._sum_messages(buffer, self.comm, "ring" if ring else "allreduce")
        if scale is not None:
            buffer *= buffer.dtype.type(scale)
        return buffer

    def _reduce_through_host(self, buffer, scale):
        """A GPU buffer reduced as a copy in pinned host memory, then copied back."""
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

    def _sum_in_scratch(self, buffer, scale=None):
        """The shared-memory methods for a buffer ``allocate`` did not place: copied into
        shared scratch memory and back; ``scale`` multiplies the sum on the way (for
        ``mean``)."""
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
            scratch = self._scratch["shared"] = NodeBuffers(self._host_comm(), count, dtype)
        return scratch

    def _reduce_in_place(self, buffers, offset, count, scale):
        """Every rank's ``[offset, offset + count)`` of ``buffers`` (made over
        ``_host_comm()``) becomes the sum of all ranks', times ``scale``."""
        block = self._buffer("block", SHARED_BLOCK, buffers.dtype)
        if self.in_host == "shared":
            sum_shares(self.comm, buffers.arrays, offset, count, scale, buffers.arrays, block)
            return
        local, arrays = self.hosts.local, buffers.arrays
        part = slice(offset, offset + count)
        if len(arrays) > 1:            # this host's sum, into its leader's buffer
            sum_shares(local, arrays, offset, count, None, arrays[:1], block)
        if self.hosts.leaders is not None:     # the ring: the fewest bytes on each link
            self._sum_messages(arrays[0][part], self.hosts.leaders, "ring")
            if scale is not None:
                arrays[0][part] *= arrays[0].dtype.type(scale)
        if len(arrays) > 1:            # every rank takes the result from its leader
            local.Barrier()
            if buffers.mine is not arrays[0]:
                buffers.mine[part] = arrays[0][part]
            local.Barrier()
