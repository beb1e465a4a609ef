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
instead (rules with servers: ``sync/server.py``). Before any of it, the driver builds each
rank's optimizer from ``rule.optimizer_section(cfg["optimizer"])`` (Downpour's servers, for
one, take no weight decay). ``workers`` is a communicator over the worker
ranks only (None in a single process); ``worker_rank`` / ``num_workers`` say which data shard a
worker reads. ``allocate`` (for ``Model``) places the flat buffers where the rule exchanges
them fastest.

A rule is one file that registers itself in ``core.registry.RULES`` and its settings with
``core.config.register_section``; ``period`` says, for messages, what sets how often it
exchanges (``{k}`` stands for a period a user gave).
"""
import contextlib

import numpy as np

from layers.backend import copy_into, on_device, to_host
from sync.stop import StopAgreement


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
    name = None
    period = None           # the setting that says how often it exchanges (for messages)
    log = None              # the run's RunLog (engine/runlog.py), set by the driver
    signals = None          # the run's StopSignals (engine/stopping.py), set by the driver
    lockstep = False        # every worker takes each step with the others (BSP)

    def __init__(self, world, cfg):
        self.world, self.cfg = world, cfg
        self.servers = self.servers_in(cfg)
        if world.size <= self.servers:
            raise ValueError(f"{self.name} needs more than {self.servers} ranks "
                             f"({self.servers} server rank(s) and at least one worker), got "
                             f"{world.size}")
        self.is_server = world.rank < self.servers
        self.num_workers = world.size - self.servers
        self.worker_rank = world.rank - self.servers
        self.workers = None
        if world.comm is not None:
            self.workers = world.comm.Split(0 if self.is_server else 1, world.rank)
        self.stop = StopAgreement(self, self.lockstep)   # where the workers stop (a signal)

    @classmethod
    def servers_in(cls, cfg):
        """How many server ranks the rule runs with ``cfg`` (none: every rank a worker)."""
        return 0

    def describe(self):
        """A line for the start of the run on how the rule communicates, or None."""
        return None

    def prepare(self, xp):
        """Check, once every rank has its device (arrays of ``xp``), what the rule needs of
        the ranks' devices (collective on the workers); raise ConfigError naming what is
        wrong."""

    def allocate(self, name, count, dtype, xp):
        """The model's flat buffer ``name`` ('params' or 'grads') of ``count`` elements:
        plain memory here; BSP places the one it averages in memory its exchange shares."""
        return xp.empty(count, dtype)

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
    def optimizer_section(self, section):
        """The optimizer settings this rank steps with, from the config's ``optimizer``
        section (the same everywhere unless a rule says otherwise)."""
        return section

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
        """Evaluate the model users care about: the workers' ``consensus`` (their average
        here), BatchNorm statistics averaged; each worker's own model is restored afterwards."""
        saved = model.params.copy(), {k: v.copy() for k, v in model.state().items()}
        self.consensus(model.params)
        for value in model.state().values():
            self.average_over_workers(value)
        try:
            yield
        finally:
            model.params[...] = saved[0]
            model.load_state(saved[1])

    def consensus(self, params):
        """Make ``params`` the parameters of the model users care about: the plain average
        of the workers' here (collective over the workers)."""
        self.average_over_workers(params)

    def finish(self, model):
        """The run is over on this worker."""

    def while_waiting(self):
        """Called while a worker waits for the others to meet (sync/stop.py): answer what
        they may be waiting for (gossip's requests); nothing here."""

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
        """Every worker writes its part (``save(folder)``). Returns the problems (on the
        first worker; [] elsewhere); asynchronous workers do not wait for each other (the
        checkpoint is whole once every file is there)."""
        failures = [save(folder)]
        if self.synchronous and self.workers is not None and self.num_workers > 1:
            failures = self.workers.allgather(failures[0])
        return [f for f in failures if f] if self.worker_rank == 0 else []
