"""The base of the rules with server ranks (EASGD, Downpour): the protocol both speak.

Ranks ``0 .. servers-1`` are servers, the rest workers. A worker sends its server a note
(FETCH, DONE or DONE_FETCH; ``notify``) or a rule's own message; ``serve_workers`` answers
whoever writes first until every worker is done: FETCH gets the values, CHECKPOINT has the
server write its part of a checkpoint, a rule's own tag goes to its handler, and at the end
the worker that sent DONE_FETCH gets the final values. No worker waits for another.

A worker whose process died (MPI reports it when the job runs with ULFM, as the launchers
start these rules) or that has sent nothing for ``worker_timeout`` seconds is dropped with a
warning, and sent a DROPPED note its listener thread (``sync/dropped.py``) acts on; the others
go on. Tags: ``sync/tags.py``.
"""
import sys
import time
from pathlib import Path

import numpy as np

from core.config import Key, register_section
from sync.comm import failed_ranks
from sync.dropped import DropListener
from sync.rule import SyncRule
from sync.tags import CHECKPOINT, DONE, DONE_FETCH, DROPPED, FETCH, SAVED, VALUES

IDLE_SLEEP = 1e-3      # a waiting server sleeps up to this long between polls

register_section("worker_timeout",       # s; servers drop silent workers
                 Key("float", 300, low=0, low_open=True, high=1e7))


def probe_sleeping(comm, status, timeout):
    """``comm.Probe(ANY_SOURCE, ANY_TAG, status)`` that sleeps while nothing arrives (a
    blocking Probe spins on a core, which a server sharing a host with workers must not) and
    gives up after ``timeout`` seconds; True if a message is there."""
    from mpi4py import MPI
    pause, give_up = 0.0, time.monotonic() + timeout
    while not comm.Iprobe(MPI.ANY_SOURCE, MPI.ANY_TAG, status):
        if time.monotonic() > give_up:
            return False
        time.sleep(pause)
        pause = min(IDLE_SLEEP, pause * 2 + 1e-5)
    return True


def warn(message):
    print(message, file=sys.stderr, flush=True)


class ServerRule(SyncRule):
    """A rule with server ranks: asynchronous (the first worker alone evaluates, each worker
    writes its part of a checkpoint when it gets there)."""

    synchronous = False

    def __init__(self, world, cfg):
        super().__init__(world, cfg)
        self.worker_timeout, self.dropped = cfg["worker_timeout"], []

    def save_checkpoint(self, folder, save):
        """The workers' parts, then the first worker has every server write its own."""
        failures = super().save_checkpoint(folder, save)
        if self.worker_rank == 0:
            for server in range(self.servers):
                self.world.comm.send(str(folder), dest=server, tag=CHECKPOINT)
                failure = self.world.comm.recv(source=server, tag=SAVED)
                failures += [failure] if failure else []
        return failures

    # -- a worker's side --------------------------------------------------------------------
    def listen_for_drop(self):
        """End this worker's process if a server drops it."""
        self.listener = DropListener(self.world.comm, self.world.rank, self.servers).start()

    def notify(self, server, tag):
        """Send ``server`` an empty note (FETCH, DONE or DONE_FETCH)."""
        self.world.comm.Send(np.zeros(1, np.int8), dest=server, tag=tag)

    # -- a server's side --------------------------------------------------------------------
    def serve_workers(self, values, handle, save):
        """Answer the workers until every one is done (see the module docstring): ``values``
        for FETCH, ``save(folder)`` for CHECKPOINT, ``handle(source, tag)`` (which must
        receive the message) for the rule's own tags. Each message served is a "serve" event
        of the timeline."""
        from mpi4py import MPI
        comm, status = self.world.comm, MPI.Status()
        active, self.notices = set(range(self.servers, self.world.size)), []
        heard = dict.fromkeys(active, time.monotonic())
        final_to = None
        while active:
            if self.signals is not None and self.signals.code:
                self.stop.on_server(self.signals.code)   # the first worker hears of it
            try:
                arrived = probe_sleeping(comm, status, timeout=1.0)
            except MPI.Exception:
                self._drop(active, failed_ranks(comm), "its process died")
                continue
            if not arrived:
                self._drop_silent(active, heard)
                continue
            source, tag = status.Get_source(), status.Get_tag()
            heard[source] = time.monotonic()
            try:
                with self.log.phase("serve", f"tag {tag} from rank {source}"):
                    done = self._serve_one(source, tag, values, handle, save)
                if done is not None:
                    active.discard(source)
                    final_to = source if done else final_to
            except MPI.Exception:            # the worker died while being served
                self._drop(active, failed_ranks(comm), "its process died")
        if final_to is not None:
            comm.Send(values, dest=final_to, tag=VALUES)
        self._deliver_notices()

    def _serve_one(self, source, tag, values, handle, save):
        """Serve one message; for DONE / DONE_FETCH whether the worker wants the final values
        (None for anything else)."""
        comm = self.world.comm
        if tag == CHECKPOINT:
            folder = comm.recv(source=source, tag=CHECKPOINT)
            comm.send(save(Path(folder)), dest=source, tag=SAVED)
        elif tag not in (FETCH, DONE, DONE_FETCH):
            handle(source, tag)
        else:
            comm.Recv(np.empty(1, np.int8), source=source, tag=tag)
            if tag == FETCH:
                comm.Send(values, dest=source, tag=VALUES)
            else:
                return tag == DONE_FETCH
        return None

    def _drop_silent(self, active, heard):
        now = time.monotonic()
        silent = [r for r in active if now - heard[r] > self.worker_timeout]
        self._drop(active, silent, f"it sent nothing for {self.worker_timeout:g} s")
        self.notices += [self.world.comm.issend(f"silent for {self.worker_timeout:g} s",
                                                dest=r, tag=DROPPED) for r in silent]

    def _deliver_notices(self, seconds=10.0):
        """Wait until the dropped workers have received their DROPPED notes (sent in
        synchronous mode: under ULFM a note is lost once its sender has ended), for no more
        than ``seconds`` (a worker whose every thread is stuck never receives it)."""
        from mpi4py import MPI
        give_up = time.monotonic() + seconds
        while self.notices and not MPI.Request.Testall(self.notices) and \
                time.monotonic() < give_up:
            time.sleep(0.05)

    def _drop(self, active, ranks, why):
        for rank in sorted(set(ranks) & active):
            active.discard(rank)
            self.dropped.append(rank)
            warn(f"warning: server rank {self.world.rank} drops worker rank {rank}: {why}; "
                 f"the other workers go on")
