"""Arrays that every rank on one host maps: one region per rank of a communicator.

Rank 0 makes a file in ``/dev/shm`` (a tmpfs: memory, never written to a disk), reserves its
size with ``posix_fallocate`` (so a full tmpfs is an error here rather than a SIGBUS on first
touch), every rank maps it, and rank 0 deletes it as soon as all have: the memory lives as long
as the last process that maps it, even one that crashes. (Only a rank 0 killed between making
the file and that moment leaves a ``parallel-training-*`` file behind.) Where there is no
writable ``/dev/shm`` (macOS, some containers), or any step fails on any rank, every rank
raises the same ``NodeMemoryError``.

Rank ``r``'s array is ``arrays[r]``; regions start on page boundaries, so ranks writing their
own regions never share a cache line.
"""
import mmap
import os
import uuid

import numpy as np


class NodeMemoryError(OSError):
    """Shared memory could not be made or mapped on some rank (the message says where)."""


def _folder():
    """Where the shared file goes: /dev/shm, a tmpfs (raises OSError where there is none)."""
    if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
        return "/dev/shm"
    raise OSError("no writable /dev/shm on this host")


class NodeBuffers:
    def __init__(self, comm, count, dtype):
        """``count`` elements of ``dtype`` per rank of ``comm``, whose ranks share this host."""
        size, rank = comm.Get_size(), comm.Get_rank()
        self.dtype = np.dtype(dtype)
        stride = max(1, -(-count * self.dtype.itemsize // mmap.PAGESIZE)) * mmap.PAGESIZE
        path, error = None, None
        if rank == 0:
            try:    # any failure here must reach the other ranks, waiting in the bcast
                path = os.path.join(_folder(),
                                    f"parallel-training-{os.getpid()}-{uuid.uuid4().hex}")
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
                try:
                    os.posix_fallocate(fd, 0, size * stride)
                finally:
                    os.close(fd)
            except Exception as err:
                where = f" in {path}" if path else ""
                error = f"rank 0 could not reserve {size * stride:,} bytes{where}: {err}"
        path, error = comm.bcast((path, error), root=0)
        memory = None
        if error is None:
            try:
                fd = os.open(path, os.O_RDWR)
                try:
                    memory = mmap.mmap(fd, size * stride)
                finally:
                    os.close(fd)
            except Exception as err:
                error = f"rank {rank} could not map {path}: {err}"
        errors = [e for e in comm.allgather(error) if e is not None]
        if rank == 0 and path is not None and os.path.exists(path):
            os.unlink(path)
        if errors:
            raise NodeMemoryError(errors[0])
        self.arrays = [np.frombuffer(memory, self.dtype, count, r * stride) for r in range(size)]
        self.mine = self.arrays[rank]
