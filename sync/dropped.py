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
import threading

DROPPED = 7             # a tag of the server protocol (sync/rule.py)


class DropListener:
    def __init__(self, comm, rank, servers, interval=0.5, out=None, leave=os._exit):
        self.comm, self.rank, self.servers, self.interval = comm, rank, servers, interval
        self.out, self.leave = out or sys.stderr, leave
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dropped", daemon=True)

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        self._thread.join()

    def _run(self):
        from mpi4py import MPI
        while not self._stop.wait(self.interval):
            for server in range(self.servers):   # by source: under ULFM, a probe of any
                try:                             # source fails once any rank has ended
                    if not self.comm.Iprobe(server, DROPPED):
                        continue
                    why = self.comm.recv(source=server, tag=DROPPED)
                except MPI.Exception:            # that server is gone: nothing will come
                    return
                self.out.write(f"rank {self.rank}: server rank {server} dropped this worker "
                               f"({why}); the others go on, this process ends\n")
                self.out.flush()
                self.leave(0)
