"""Downpour SGD (Dean et al. 2012): parameter servers owning shards, asynchronous workers.

Ranks 0..S-1 are servers; server s owns the contiguous shard ``[lo_s, hi_s)`` of the flat
parameter buffer (equal parts, the first ones one element longer). A worker

- every ``n_fetch`` steps fetches the parameters from every server (before its forward pass),
- every step adds its gradient to an accrued buffer and takes a local optimizer step,
- every ``n_push`` steps sends each server its shard of the accrued gradient, then zeroes it.

A server applies each push at once, with the configured optimizer (SGD, or Adagrad:
``eta_i = lr / sqrt(sum of squared pushed gradients_i)``) at the learning rate of the
schedule at the epoch the workers have reached together (pushed steps / workers). Nobody waits
for anybody but the server it talks to. The model users care about is the servers' parameters:
the first worker fetches them to evaluate, and at the end after every worker is done.
"""
import contextlib

import numpy as np

from core.config import Key, register_section
from core.registry import RULES
from layers.backend import copy_into, host_like, on_device
from layers.parallel import ranges
from sync.rule import through_host
from sync.server import ServerRule
from sync.tags import DONE, DONE_FETCH, DOWNPOUR_PUSH as PUSH, FETCH, VALUES
from sync.wire import Wire

register_section("downpour", {
    "servers": Key("int", 1, low=1),              # parameter-server ranks
    "n_fetch": Key("int", 1, low=1),              # steps between fetches
    "n_push": Key("int", 1, low=1),               # steps between pushes
})


def shard_bounds(size, servers):
    """[(lo, hi), ...] of ``servers`` contiguous shards covering [0, size) exactly once."""
    if size < servers:
        raise ValueError(f"{servers} servers for {size} parameters")
    return ranges(size, servers)


@RULES.register("DOWNPOUR")
class Downpour(ServerRule):
    name = "DOWNPOUR"
    period = "downpour.n_push and downpour.n_fetch"

    def __init__(self, world, cfg):
        super().__init__(world, cfg)
        self.n_fetch, self.n_push = cfg["downpour"]["n_fetch"], cfg["downpour"]["n_push"]
        self.finished = False
        self.pushes = np.zeros(self.num_workers, np.int64)   # a server's count per worker

    @classmethod
    def servers_in(cls, cfg):
        return cfg["downpour"]["servers"]

    def start(self, model):
        """Every rank starts from the first server's parameters."""
        through_host(model.params, lambda params: self.world.comm.Bcast(params, root=0))
        self.bounds = shard_bounds(model.params.size, self.servers)
        self.accrued = np.zeros_like(model.params)
        if not self.is_server:
            self.wire = Wire(model.params)
            self.listen_for_drop()

    def fetch(self, params, tag=FETCH):
        """Overwrite ``params`` with the servers' shards."""
        for server in range(self.servers):
            self.notify(server, tag)
        into = self.wire.buffer("fetched", params) \
            if on_device(params) and not self.wire.direct else params
        for server, (lo, hi) in enumerate(self.bounds):
            self.world.comm.Recv(into[lo:hi], source=server, tag=VALUES)
        if into is not params:
            copy_into(params, into)

    def state_dict(self):
        """A worker's accrued gradient; a server's counts of pushes per worker (its
        learning-rate clock). The server's shard and Adagrad sums are its parameters and
        optimizer state."""
        if self.is_server:
            return {"pushes": self.pushes}
        return {"accrued": self.accrued}

    def load_state_dict(self, state):
        if self.is_server:
            if state["pushes"].shape != self.pushes.shape:
                raise ValueError(f"rule/pushes has shape {state['pushes'].shape}, not one "
                                 f"count per worker {self.pushes.shape} (an older format)")
            self.pushes[...] = state["pushes"]
        else:
            copy_into(self.accrued, state["accrued"])

    def push(self):
        """Send every server its shard of the accrued gradient, then zero it."""
        accrued = self.wire.outgoing("accrued", self.accrued)
        requests = [self.world.comm.Isend(accrued[lo:hi], dest=server, tag=PUSH)
                    for server, (lo, hi) in enumerate(self.bounds)]
        self.world.MPI.Request.Waitall(requests)
        self.accrued[...] = 0

    def after_backward(self, model, step):
        self.accrued += model.grads

    def after_update(self, model, step):
        if step % self.n_push == 0:
            self.push()
        if step % self.n_fetch == 0:
            self.fetch(model.params)

    @contextlib.contextmanager
    def evaluated(self, model):
        """The first worker evaluates the servers' parameters."""
        if self.worker_rank != 0:
            yield
            return
        saved = model.params.copy()
        if not self.finished:
            self.fetch(model.params)
        else:
            copy_into(model.params, self.final)
        try:
            yield
        finally:
            model.params[...] = saved

    def finish(self, model):
        """Push what is accrued, then tell the servers this worker is done; the first worker
        receives the final parameters once every worker is."""
        if self.accrued.any():
            self.push()
        if self.worker_rank == 0:
            self.final = host_like(model.params)
            self.fetch(self.final, tag=DONE_FETCH)
        else:
            for server in range(self.servers):
                self.notify(server, DONE)
        self.finished = True
        self.listener.stop()

    def serve(self, model, optimizer, schedule, steps_per_epoch, save):
        lo, hi = shard_bounds(model.params.size, self.servers)[self.world.rank]
        shard, pushed = model.params[lo:hi], np.empty(hi - lo, model.params.dtype)

        def apply_push(source, tag):
            self.world.comm.Recv(pushed, source=source, tag=PUSH)
            optimizer.step(shard, pushed, lr=schedule.lr_at(self.epoch(steps_per_epoch)))
            self.pushes[source - self.servers] += 1
        self.serve_workers(shard, apply_push, save)

    def epoch(self, steps_per_epoch):
        """The servers' learning-rate clock: the mean epoch of the workers still in the run,
        from their pushes (a dropped worker stops counting, so the schedule still reaches its
        end with the run)."""
        live = [w for w in range(self.num_workers) if w + self.servers not in self.dropped]
        return self.pushes[live or slice(None)].mean() * self.n_push / steps_per_epoch
