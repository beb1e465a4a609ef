"""Where the workers stop when a rank is asked to (engine/stopping.py): a step boundary they
agree on, and the step that names the checkpoint they write.

- In lockstep (BSP): every step, a max all-reduce of the requests (0, 130 or 143) over the
  workers, so all stop after the same step.
- Otherwise (EASGD, Downpour, gossip, LOCAL) the first worker coordinates, and no worker waits
  for another at a step. A rank asked to stop tells the first worker (STOP, with the exit
  status); at its next step boundary the first worker tells every other worker (STOP_NOW, with
  the exit status and its step, which names the checkpoint) and stops; each worker stops at
  its own next boundary after STOP_NOW arrives, and resumes later from its own step.
- Before each collective of the workers (validation, checkpoints, the end) they ``meet``: each
  tells the others it has arrived (ARRIVE) and waits for all, answering its rule's messages
  (``SyncRule.while_waiting``), unless STOP_NOW comes first, which ends the meeting. The first
  worker sends STOP_NOW only before it has arrived, so no worker enters a collective that
  another will not.

The messages are a few bytes, sent with blocking sends that complete at once; ``end``
receives what is left before the process ends. Under ULFM (``mpiexec --with-ft ulfm``) a
worker whose process died is acknowledged and left out, as the servers leave it out.
"""
import time

import numpy as np

from sync.comm import failed_ranks
from sync.tags import ARRIVE, STOP, STOP_NOW

POLL = 1e-3           # seconds between polls while meeting


class StopAgreement:
    def __init__(self, rule, lockstep):
        """For ``rule`` (its ``world``, ``workers``, ``servers``); ``lockstep``: the workers
        take every step together (agree by all-reduce)."""
        self.rule, self.lockstep = rule, lockstep
        self.comm = rule.world.comm
        self.first = rule.servers             # the first worker's rank in the world
        self.told = False                     # this rank has sent its STOP
        self.pending = 0                      # a request the first worker has not acted on
        self.early = {}                       # step -> ARRIVEs heard for that meeting
        self.lost = set()                     # world ranks whose processes died (ULFM)

    def _others(self):
        """World ranks of the other workers."""
        mine = self.rule.world.rank
        return [r for r in range(self.first, self.rule.world.size)
                if r != mine and r not in self.lost]

    def _send(self, values, dest, tag):
        """Send a few int64s, unless ``dest`` died (it is then left out)."""
        from mpi4py import MPI
        try:
            self.comm.Send(np.array(values, np.int64), dest=dest, tag=tag)
        except MPI.Exception:
            self._acknowledge()

    def _acknowledge(self):
        """After MPI reported a dead process: acknowledge it (receives from any source work
        again) and leave it out."""
        self.lost.update(failed_ranks(self.comm))

    def _tell_first(self, code):
        """A rank other than the first worker passes its request on, once."""
        if code and not self.told and self.comm is not None:
            self._send([code], self.first, STOP)
            self.told = True

    def _heard(self, tag, count):
        """The first pending message with ``tag`` (``count`` int64s), or None."""
        from mpi4py import MPI
        status = MPI.Status()
        try:
            arrived = self.comm.Iprobe(MPI.ANY_SOURCE, tag, status)
        except MPI.Exception as err:
            if err.Get_error_class() not in (MPI.ERR_PROC_FAILED, MPI.ERR_PROC_FAILED_PENDING):
                raise
            self._acknowledge()
            arrived = self.comm.Iprobe(MPI.ANY_SOURCE, tag, status)
        if not arrived:
            return None
        message = np.empty(count, np.int64)
        self.comm.Recv(message, source=status.Get_source(), tag=tag)
        return message

    def on_server(self, code):
        """A server with a request: the first worker hears of it."""
        self._tell_first(code)

    def boundary(self, code, step):
        """At a step boundary with this rank's request ``code``: (exit status, step naming
        the checkpoint) when the workers stop here, else (0, None)."""
        if self.comm is None or (self.lockstep and self.rule.num_workers == 1):
            return (code, step) if code else (0, None)
        if self.lockstep:
            agreed = int(self.rule.workers.allreduce(code, op=self._max()))
            return (agreed, step) if agreed else (0, None)
        if self.rule.world.rank != self.first:
            self._tell_first(code)
            now = self._heard(STOP_NOW, 2)
            return (int(now[0]), int(now[1])) if now is not None else (0, None)
        while (heard := self._heard(STOP, 1)) is not None:
            self.pending = self.pending or int(heard[0])
        code = code or self.pending
        if not code:
            return 0, None
        for rank in self._others():
            self._send([code, step], rank, STOP_NOW)
        return code, step

    def meet(self, code, step, collective=True):
        """Before a collective of the workers (``collective``; else a plain boundary) at
        ``step``: (exit status, step) if they stop instead, else (0, None)."""
        stop = self.boundary(code, step)
        if (stop[0] or not collective or self.lockstep or self.rule.num_workers == 1
                or self.comm is None):
            return stop
        for rank in self._others():
            self._send([step], rank, ARRIVE)
        while self.early.get(step, 0) < len(self._others()):     # a dead worker drops out
            heard = self._heard(ARRIVE, 1)
            if heard is not None:         # a worker already at a later meeting counts there
                self.early[int(heard[0])] = self.early.get(int(heard[0]), 0) + 1
                continue
            if self.rule.world.rank != self.first:
                self._tell_first(self.rule.signals.code if self.rule.signals else 0)
                now = self._heard(STOP_NOW, 2)
                if now is not None:
                    return int(now[0]), int(now[1])
            self.rule.while_waiting()
            time.sleep(POLL)
        del self.early[step]
        return 0, None

    def end(self):
        """The workers have stopped: each waits for all (so that none ends the job while
        another still writes its checkpoint), then receives what is left of this protocol's
        messages to it."""
        if self.comm is None:
            return
        if self.rule.num_workers > 1:
            self.rule.workers.Barrier()
        for tag, count in ((STOP, 1), (STOP_NOW, 2), (ARRIVE, 1)):
            while self._heard(tag, count) is not None:
                pass

    @staticmethod
    def _max():
        from mpi4py import MPI
        return MPI.MAX
