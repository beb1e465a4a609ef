"""Where the ranks of a communicator run, and sums over one host's ranks in shared memory.

``Hosts(comm)`` groups the ranks by host (MPI's ``COMM_TYPE_SHARED``: the ranks that can share
memory): ``local`` is the communicator of this rank's host, ``leaders`` that of every host's
first rank (None on the others), ``count`` the number of hosts and ``most`` the ranks on the
fullest one.

``sum_shares``: the k ranks of one host hold their buffers x_0..x_{k-1} in memory all of them
map (``sync/node_memory.py``). Between two barriers rank q computes, for the elements j of its
share (a 1/k slice cut at multiples of 16 elements, so that no two ranks write one cache line),

    s[j] = scale * sum_p x_p[j]

in cache-sized blocks, and writes s[j] into the buffers it is asked to (all k, or only the
leader's x_0). Each rank reads and writes its share once, as a memcpy of the buffer would.

The hierarchical all-reduce (``sync/exchange.py``, as Horovod's hierarchical allreduce):
s_h = sum over host h's ranks into its leader's buffer (``sum_shares``); the leaders sum the
s_h across hosts by the ring; every rank copies the result from its leader's buffer.
Only the leaders' all-reduce crosses the network.
"""
import numpy as np


class Hosts:
    def __init__(self, comm, host=None):
        """Collective over ``comm``. ``host`` (tests): group the ranks by this key instead of
        by the machine they run on."""
        from mpi4py import MPI
        rank = comm.Get_rank()
        self.local = comm.Split_type(MPI.COMM_TYPE_SHARED, key=rank) if host is None \
            else comm.Split(host, key=rank)
        first = self.local.Get_rank() == 0
        leaders = comm.Split(0 if first else MPI.UNDEFINED, key=rank)
        self.leaders = leaders if first else None
        self.count = comm.allreduce(int(first))
        self.most = comm.allreduce(self.local.Get_size(), op=MPI.MAX)

    def describe(self):
        """'<hosts> host(s), at most <most> rank(s) on one'."""
        return f"{self.count} host(s), at most {self.most} rank(s) on one"


def share_cuts(offset, count, n):
    """The n + 1 bounds of the n ranks' shares of ``[offset, offset + count)``: inner cuts at
    multiples of 16 elements."""
    return [offset] + [max(offset, (offset + count * i // n) // 16 * 16)
                       for i in range(1, n)] + [offset + count]


def sum_shares(comm, arrays, offset, count, scale, into, block):
    """Every array of ``into`` gets ``scale`` (None: 1) times the sum of ``arrays`` (one per
    rank of ``comm``, in shared memory) over ``[offset, offset + count)``; ``block`` is a
    work buffer whose size sets the block. Collective over ``comm``, between two barriers:
    every buffer is final before anyone reads, every share written before anyone goes on
    (stores before a barrier are seen by the other ranks after it: the barrier's fences)."""
    rank = comm.Get_rank()
    cuts = share_cuts(offset, count, len(arrays))
    factor = arrays[0].dtype.type(scale) if scale is not None else None
    comm.Barrier()
    for lo in range(cuts[rank], cuts[rank + 1], block.size):
        hi = min(lo + block.size, cuts[rank + 1])
        total = block[:hi - lo]
        if len(arrays) == 1:
            total[...] = arrays[0][lo:hi]
        else:
            np.add(arrays[0][lo:hi], arrays[1][lo:hi], out=total)
        for other in arrays[2:]:
            total += other[lo:hi]
        if factor is not None:
            total *= factor
        for array in into:
            array[lo:hi] = total
    comm.Barrier()
