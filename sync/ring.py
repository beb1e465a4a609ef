"""The ring all-reduce (Patarasuk & Yuan 2009): the sum of a flat buffer over the n ranks of a
communicator, in place, by point-to-point ``Sendrecv`` calls around the ring r -> r + 1.

The buffer is cut into n chunks c_0..c_{n-1}. Reduce-scatter: at step s = 0..n-2 rank r sends
c_{r-s} to its right and adds the c_{r-s-1} it receives from its left, so after n - 1 steps it
holds the full sum of c_{r+1}. Allgather: at step s rank r sends the finished c_{r-s+1} and
receives c_{r-s}, which it keeps. Each rank sends and receives 2 (n - 1) / n of the buffer, the
minimum for an all-reduce, and every chunk's sum is computed once, on one rank, so every rank
ends with the same bits.

With ``wire`` (float16) each chunk travels in that type and is added into the full-precision
buffer: only the values on the wire are rounded, and every rank ends with its own chunk rounded
the same way, so all hold the same values.
"""
from layers import backend


def ring_sum(comm, buffer, wire, scratch):
    """Replace the contiguous 1-D ``buffer`` by its sum over ``comm``'s ranks. ``wire``: the
    type on the wire (None: the buffer's); ``scratch(key, count, dtype, xp)`` gives reusable
    work buffers."""
    n, rank = comm.Get_size(), comm.Get_rank()
    right, left = (rank + 1) % n, (rank - 1) % n
    bounds = [len(buffer) * i // n for i in range(n + 1)]
    chunk = lambda i: buffer[bounds[i % n]:bounds[i % n + 1]]   # noqa: E731
    longest = max(b - a for a, b in zip(bounds, bounds[1:]))
    xp = backend.array_module(buffer)
    incoming = scratch("in", longest, wire or buffer.dtype, xp)
    outgoing = scratch("out", longest, wire, xp) if wire is not None else None

    def send(i):
        data = chunk(i)
        if outgoing is None:
            return data
        out = outgoing[:len(data)]
        out[...] = data
        backend.synchronize(xp)       # MPI reads ``out`` once the GPU has written it
        return out

    for step in range(n - 1):         # reduce-scatter
        target = chunk(rank - step - 1)
        received = incoming[:len(target)]
        comm.Sendrecv(send(rank - step), dest=right, recvbuf=received, source=left)
        target += received
        backend.synchronize(xp)       # the next send may read this sum: it must be done
    for step in range(n - 1):         # allgather
        target = chunk(rank - step)
        if wire is None:
            comm.Sendrecv(chunk(rank - step + 1), dest=right, recvbuf=target, source=left)
        else:
            received = incoming[:len(target)]
            comm.Sendrecv(send(rank - step + 1), dest=right, recvbuf=received, source=left)
            target[...] = received
    if wire is not None:              # every rank ends with the same (wire-rounded) values
        own = chunk(rank + 1)
        own[...] = own.astype(wire)
