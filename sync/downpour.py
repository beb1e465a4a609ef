"""Downpour SGD (Dean et al. 2012): parameter servers owning shards, asynchronous workers.

Ranks 0..S-1 are servers; server s owns the contiguous shard ``[lo_s, hi_s)`` of the flat
parameter buffer (equal parts, the first ones one element longer). A worker, at its step
t = 1, 2, ... (the driver's count), with its parameters x:

    g_t = grad L(x; batch_t) + wd x        the gradient of the regularised loss, at x
    a <- a + g_t                           the accrued gradient
    x <- x - lr g_t                        its local step (plain SGD under ``dean``; else the
                                           configured optimizer with g_t: momentum, Adagrad)
    t mod n_push == 0:   each server gets its shard of a, and a <- 0
    t mod n_fetch == 0:  x <- the servers' parameters (before the next gradient)

A step the driver skips (``on_nonfinite: skip``: a non-finite loss or gradient) adds nothing:
g_t is kept in ``after_backward`` and accrued in ``after_update``, which the driver calls only
for a step it takes. At the end a worker pushes what it has accrued. A server applies each
push D at once, at the learning rate of the schedule at the epoch the workers have reached
together (pushed steps / workers), and adds no weight decay of its own:

    SGD:      v <- mu v + D,  w <- w - lr v                 (mu = 0 under ``dean``)
    Adagrad:  s <- s + D^2,   w <- w - lr D / (sqrt(s) + eps)

Choices, and Dean et al.'s Algorithm 7.1 (the Downpour SGD client):

- Weight decay travels in the accrued gradient: the worker accrues the gradient of the
  regularised loss (wd x at the x its gradient was taken at) and the server adds none. A push
  of n steps then carries n steps of decay, as it carries n gradients, so the effective decay
  does not depend on ``n_push`` (a server adding wd w once per push decays by wd / n_push per
  step), and the server stays what Dean's is: it applies the gradients of the objective
  (regularisation included) that the workers send.
- ``downpour.dean: null`` (default): the servers apply the pushes with the configured
  optimizer, momentum and Nesterov included (Dean's servers have none), and the workers' local
  step is the configured optimizer too (Dean's is plain SGD).
- ``downpour.dean: sgd`` or ``adagrad`` is Algorithm 7.1 with an SGD or an Adagrad server
  (Adagrad: eta_i = lr / sqrt(sum of the squared pushes_i), eps added to the root): plain SGD
  on the workers, plain SGD or Adagrad on the servers. The optimizer section gives the learning
  rate (its schedule; the same on workers and servers), ``weight_decay`` and ``eps``; its name,
  momentum and Nesterov are set aside.
- Step indexing. Algorithm 7.1 counts steps s from 0, fetches before step s when
  s mod n_fetch == 0 and pushes after step s when s mod n_push == 0. Here t = s + 1: the
  fetches fall on the same steps (Dean's fetch at s = 0 is the start, where every rank takes
  the first server's parameters), the pushes one step later: Dean's first push follows s = 0
  and carries one gradient, the others n_push each; here every push follows t = k n_push
  (s = k n_push - 1) and carries n_push, and the end pushes the rest. With n_push = 1 there is
  no difference. Dean's client fetches and pushes asynchronously, beside its computation; here
  they are done in the step (a push and a fetch at the same step: the push first), so one
  worker runs Algorithm 7.1 read sequentially.

Nobody waits for anybody but the server it talks to. The model users care about is the
servers' parameters: the first worker fetches them to evaluate, and at the end after every
worker is done.
"""
import contextlib

import numpy as np

from core.config import Key, register_section
from core.registry import RULES
from layers.backend import array_module, copy_into, host_like, on_device
from layers.parallel import ranges
from sync.rule import through_host
from sync.server import ServerRule
from sync.tags import DONE, DONE_FETCH, DOWNPOUR_PUSH as PUSH, FETCH, VALUES
from sync.wire import Wire

register_section("downpour", {
    "servers": Key("int", 1, low=1),              # parameter-server ranks
    "n_fetch": Key("int", 1, low=1),              # steps between fetches
    "n_push": Key("int", 1, low=1),               # steps between pushes
    # null: the configured optimizer on workers and servers; sgd / adagrad: Dean et al.'s
    # Algorithm 7.1 (plain SGD on the workers, an SGD or Adagrad server)
    "dean": Key("str", None, choices=("sgd", "adagrad"), nullable=True),
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
        self.dean, self.weight_decay = cfg["downpour"]["dean"], cfg["optimizer"]["weight_decay"]
        self.finished = False
        self.pushes = np.zeros(self.num_workers, np.int64)   # a server's count per worker

    @classmethod
    def servers_in(cls, cfg):
        return cfg["downpour"]["servers"]

    def optimizer_section(self, section):
        """A server's optimizer adds no weight decay (the workers accrue it); under ``dean`` a
        worker's is plain SGD and a server's plain SGD or Adagrad (module docstring)."""
        if self.dean:
            section = dict(section, name=self.dean if self.is_server else "sgd",
                           momentum=0.0, nesterov=False)
        return dict(section, weight_decay=0.0) if self.is_server else section

    def start(self, model):
        """Every rank starts from the first server's parameters."""
        through_host(model.params, lambda params: self.world.comm.Bcast(params, root=0))
        self.bounds = shard_bounds(model.params.size, self.servers)
        self.accrued = np.zeros_like(model.params)
        if not self.is_server:
            # this step's g + wd x, accrued once the step is taken (wd = 0: the gradient)
            self.gradient = np.zeros_like(model.params) if self.weight_decay else model.grads
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
        """Keep g_t = grads + wd x, x the parameters the gradient was taken at (the local
        step changes them); a skipped step ends here, and its g_t is dropped."""
        if self.weight_decay:
            array_module(model.params).multiply(model.params, self.weight_decay,
                                                out=self.gradient)
            self.gradient += model.grads

    def after_update(self, model, step):
        """Accrue g_t (only a step taken gets here), then push and fetch when due."""
        self.accrued += self.gradient
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
