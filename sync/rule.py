"""What every sync rule provides to the training loop.

The loop calls, on a worker::

    rule.start(model)                   # all workers begin from worker 0's parameters
    loss = rule.agree_loss(loss)        # the loss every worker acts on (NaN guard, logging)
    model.backward(rule.backward_hook)  # BSP may start averaging buckets from here
    rule.after_backward(model, step)    # gradients ready (BSP averages them here)
    rule.after_update(model, step)      # parameters ready (averaging, elastic moves, pushes)
    with rule.evaluated(model): ...     # the model users care about, for validation
    rule.finish(model)

and on a server rank ``rule.serve(model, optimizer, schedule, steps_per_epoch, save)``
instead. ``workers`` is a communicator over the worker ranks only (None in a single process);
``worker_rank`` / ``num_workers`` say which data shard a worker reads.
"""
import contextlib
import sys
import time
from pathlib import Path

import numpy as np

from layers.backend import copy_into, on_device, to_host
from sync.dropped import DROPPED, DropListener

IDLE_SLEEP = 1e-3      # a waiting server sleeps up to this long between polls

# Tags of the server protocol that EASGD and Downpour share: a worker asks for the server's
# values (FETCH), says it is done (DONE), or is done and wants the final values (DONE_FETCH);
# the server answers with VALUES. CHECKPOINT (a folder) asks a server to write its part of a
# checkpoint, SAVED answers it. Rule-specific messages use tags from 10 on.
# DROPPED (sync/dropped.py) tells a worker the server dropped it.
FETCH, DONE, DONE_FETCH, VALUES, CHECKPOINT, SAVED = 1, 2, 3, 4, 5, 6


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


def failed_ranks(comm):
    """Ranks of ``comm`` whose processes failed (ULFM), acknowledged so that receives from
    any source work again."""
    from mpi4py import MPI
    comm.Ack_failed()
    failed = comm.Get_failed()
    ranks = MPI.Group.Translate_ranks(failed, list(range(failed.Get_size())), comm.Get_group())
    return [r for r in ranks if r != MPI.UNDEFINED]


def warn(message):
    print(message, file=sys.stderr, flush=True)


def through_host(buffer, call):
    """``call(buffer)`` for a NumPy buffer; for a GPU buffer, ``call`` on a host copy that is
    copied back afterwards (for the rare, small collectives: start, evaluation, finish; the
    per-step exchange has its own device path, sync/exchange.py)."""
    if not on_device(buffer):
        return call(buffer)
    host = to_host(buffer)
    call(host)
    copy_into(buffer, host)


class SyncRule:
    name = "LOCAL"
    log = None              # the run's RunLog (engine/runlog.py), set by the driver

    def __init__(self, world, cfg):
        self.world, self.cfg = world, cfg
        self.servers = self.num_servers()
        if world.size <= self.servers:
            raise ValueError(f"{self.name} needs more than {self.servers} ranks "
                             f"({self.servers} server rank(s) and at least one worker), got "
                             f"{world.size}")
        self.is_server = world.rank < self.servers
        self.num_workers = world.size - self.servers
        self.worker_rank = world.rank - self.servers
        self.worker_timeout, self.dropped = cfg["worker_timeout"], []
        self.workers = None
        if world.comm is not None:
            self.workers = world.comm.Split(0 if self.is_server else 1, world.rank)

    def num_servers(self):
        return 0

    # Synchronous rules (BSP, gossip, LOCAL) evaluate with every worker taking its shard of the
    # validation set and save checkpoints together. In asynchronous ones (EASGD, Downpour) no
    # worker waits for another: the first worker alone evaluates the whole set, and each
    # worker writes its part of a checkpoint when it gets there.
    synchronous = True

    @property
    def reports(self):
        """True on the rank that prints progress and validation results."""
        return self.worker_rank == 0

    @property
    def evaluates(self):
        return self.synchronous or self.worker_rank == 0

    @property
    def val_shard(self):
        """(rank, size) of this worker's part of the validation set."""
        return (max(self.worker_rank, 0), self.num_workers) if self.synchronous else (0, 1)

    # -- collectives among the workers ------------------------------------------------------
    def worker_sum(self, values):
        """Element-wise sum of a small float64 array over the workers (over the evaluating
        worker alone for asynchronous rules)."""
        values = np.asarray(values, np.float64)
        if self.workers is None or self.num_workers == 1 or not self.synchronous:
            return values
        from mpi4py import MPI
        out = np.empty_like(values)
        self.workers.Allreduce(values, out, op=MPI.SUM)
        return out

    def broadcast_from_first_worker(self, model):
        if self.workers is not None and self.num_workers > 1:
            for buffer in [model.params] + list(model.state().values()):
                through_host(buffer, lambda b: self.workers.Bcast(b, root=0))

    def average_over_workers(self, buffer):
        if self.workers is not None and self.num_workers > 1:
            from mpi4py import MPI
            through_host(buffer, lambda b: self.workers.Allreduce(MPI.IN_PLACE, b, op=MPI.SUM))
            buffer *= buffer.dtype.type(1.0 / self.num_workers)

    # -- hooks ------------------------------------------------------------------------------
    backward_hook = None    # on_ready(offset) for Model.backward: gradients final from offset
    def start(self, model):
        self.broadcast_from_first_worker(model)

    def agree_loss(self, loss):
        """The local loss (asynchronous rules do not wait for each other)."""
        return loss

    def agree_finite(self, finite):
        """Whether every worker that must act together saw finite gradients (asynchronous
        rules decide alone)."""
        return finite

    def after_backward(self, model, step):
        """Gradients are ready."""

    def after_update(self, model, step):
        """Parameters are ready."""

    @contextlib.contextmanager
    def evaluated(self, model):
        """Evaluate the average of the workers' models (parameters and BatchNorm statistics);
        each worker's own model is restored afterwards."""
        saved = model.params.copy(), {k: v.copy() for k, v in model.state().items()}
        self.average_over_workers(model.params)
        for value in model.state().values():
            self.average_over_workers(value)
        try:
            yield
        finally:
            model.params[...] = saved[0]
            model.load_state(saved[1])

    def finish(self, model):
        """The run is over on this worker."""

    def serve(self, model, optimizer, schedule, steps_per_epoch, save):
        """A server rank's whole run (rules with servers); ``save(folder)`` writes this rank's
        part of a checkpoint and returns None or the problem."""
        raise RuntimeError(f"sync rule {self.name} has no server ranks")

    # -- checkpoints ------------------------------------------------------------------------
    def state_dict(self):
        """Arrays of the rule's own state on this rank, for a checkpoint."""
        return {}

    def load_state_dict(self, state):
        """Restore what ``state_dict`` returned."""

    def save_checkpoint(self, folder, save):
        """Every worker writes its part (``save(folder)``); the first worker has the servers
        write theirs. Returns the problems (on the first worker; [] elsewhere); asynchronous
        workers do not wait for each other (the checkpoint is whole once every file is
        there)."""
        failures = [save(folder)]
        if self.synchronous and self.workers is not None and self.num_workers > 1:
            failures = self.workers.allgather(failures[0])
        if self.worker_rank == 0:
            for server in range(self.servers):
                self.world.comm.send(str(folder), dest=server, tag=CHECKPOINT)
                failures.append(self.world.comm.recv(source=server, tag=SAVED))
        return [f for f in failures if f] if self.worker_rank == 0 else []

    # -- the server protocol ----------------------------------------------------------------
    def listen_for_drop(self):
        """On a worker of a rule with servers: end this process if a server drops it."""
        self.listener = DropListener(self.world.comm, self.world.rank, self.servers).start()

    def notify(self, server, tag):
        """Send ``server`` an empty note (FETCH, DONE or DONE_FETCH)."""
        self.world.comm.Send(np.zeros(1, np.int8), dest=server, tag=tag)

    def serve_workers(self, values, handle, save):
        """Answer the workers until every one is done: FETCH gets ``values``, CHECKPOINT has
        ``save`` write this rank's part, other tags go to ``handle(source, tag)`` (which must
        receive the message); at the end the worker that sent DONE_FETCH gets the final
        ``values``. Each message served is a "serve" event of the timeline.

        A worker whose process died (reported by MPI when the job runs with ULFM, as the
        launchers start it) or that has sent nothing for ``worker_timeout`` seconds is
        dropped with a warning; the others go on."""
        from mpi4py import MPI
        comm, status, note = self.world.comm, MPI.Status(), np.empty(1, np.int8)
        active, self.notices = set(range(self.servers, self.world.size)), []
        heard = dict.fromkeys(active, time.monotonic())
        final_to = None
        while active:
            try:
                arrived = probe_sleeping(comm, status, timeout=1.0)
            except MPI.Exception:
                self._drop(active, failed_ranks(comm), "its process died")
                continue
            if not arrived:
                now = time.monotonic()
                silent = [r for r in active if now - heard[r] > self.worker_timeout]
                self._drop(active, silent, f"it sent nothing for {self.worker_timeout:g} s")
                self.notices += [comm.issend(f"silent for {self.worker_timeout:g} s", dest=r,
                                             tag=DROPPED) for r in silent]
                continue
            source, tag = status.Get_source(), status.Get_tag()
            heard[source] = time.monotonic()
            try:
                with self.log.phase("serve", f"tag {tag} from rank {source}"):
                    if tag == CHECKPOINT:
                        folder = comm.recv(source=source, tag=CHECKPOINT)
                        comm.send(save(Path(folder)), dest=source, tag=SAVED)
                    elif tag not in (FETCH, DONE, DONE_FETCH):
                        handle(source, tag)
                    else:
                        comm.Recv(note, source=source, tag=tag)
                        if tag == FETCH:
                            comm.Send(values, dest=source, tag=VALUES)
                        else:
                            active.discard(source)
                            final_to = source if tag == DONE_FETCH else final_to
            except MPI.Exception:            # the worker died while being served
                self._drop(active, failed_ranks(comm), "its process died")
        if final_to is not None:
            comm.Send(values, dest=final_to, tag=VALUES)
        self._deliver_notices()

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
