"""A worker of an asynchronous rule (EASGD, Downpour) learns that the server dropped it.

A server drops a worker that has been silent for ``worker_timeout`` seconds and sends it a
DROPPED note with the reason. The worker may be hung (computing forever, stuck in I/O) or just
very slow; either way it has no part in the run any more, and a process that never ends keeps
``mpiexec`` from exiting. So every such worker has a daemon thread that polls for the note
(MPI is initialized with MPI_THREAD_MULTIPLE) and, when it comes, prints it and ends the
process with status 0: the run itself goes on and ends normally without it.
"""
import os
import sys

from sync.periodic import Periodic
from sync.tags import DROPPED


class DropListener(Periodic):
    name = "dropped"

    def __init__(self, comm, rank, servers, interval=0.5, out=None, leave=os._exit):
        super().__init__(interval)
        self.comm, self.rank, self.servers = comm, rank, servers
        self.out, self.leave = out or sys.stderr, leave

    def tick(self):
        from mpi4py import MPI
        for server in range(self.servers):   # by source: under ULFM, a probe of any source
            try:                             # fails once any rank has ended
                if not self.comm.Iprobe(server, DROPPED):
                    continue
                why = self.comm.recv(source=server, tag=DROPPED)
            except MPI.Exception:            # that server is gone: nothing will come
                return False
            self.out.write(f"rank {self.rank}: server rank {server} dropped this worker "
                           f"({why}); the others go on, this process ends\n")
            self.out.flush()
            self.leave(0)
