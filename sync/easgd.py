"""Elastic averaging SGD (Zhang, Choromanska & LeCun 2015), asynchronous, one server.

Rank 0 holds the center variable x~. Every ``tau`` steps worker i sends its parameters x_i
and receives the center; both move towards each other by the elastic difference

    d = alpha * (x_i - x~),    x_i <- x_i - d,    x~ <- x~ + d

(the worker computes d from the center it received, the server from the same center before
its update, so both apply the same d, and each exchange keeps x~ + sum_i x_i: only the
workers' own steps change it). The server answers whichever worker's message arrives first;
no worker waits for another. Workers end by sending DONE; the server stops when all have, then
hands the final center to the first worker, which evaluates it (the model users care about).

Choices, against the paper:

- The move comes after the SGD step (Theano-MPI's order): worker i's step t = 1, 2, ... is
  ``x_i <- x_i - lr g(x_i)`` (the configured optimizer), then, when t mod tau == 0, the move,
  and the next gradient is taken at the moved parameters. The paper's asynchronous EASGD
  (Algorithm 1, steps s from 0) reads x = x_i at a step s with s mod tau == 0 and sets
  ``x_i <- x - alpha (x - x~) - lr g(x)``: its elastic difference is the one here (x is the
  value after step t = s), but that step's gradient is taken before the move, at x.
- The move rate is alpha per worker: each exchange moves the center by alpha (x_i - x~), so
  over one exchange of each of N workers it moves by about beta (mean_i x_i - x~) with the
  paper's beta = N alpha (the paper fixes beta, 0.9, and takes alpha = beta / N; here alpha
  is what is set, so N workers pull the center N times as hard as one).

Defaults tau = 10, alpha = 0.5 as in Theano-MPI. BatchNorm's running statistics are not
exchanged: the evaluation uses the first worker's. With ``device: gpu`` the workers'
parameters live on their GPUs and their messages go from and to device memory through a
CUDA-aware MPI, else through pinned host copies (``sync/wire.py``); the server keeps the
center in host memory.
"""
import contextlib

import numpy as np

from core.config import Key, register_section
from core.registry import RULES
from layers.backend import copy_into, host_like
from sync.rule import through_host
from sync.server import ServerRule
from sync.tags import DONE, DONE_FETCH, EASGD_EXCHANGE as EXCHANGE, FETCH, VALUES
from sync.wire import Wire

register_section("easgd", {
    "tau": Key("int", 10, low=1),                 # steps between a worker's exchanges
    "alpha": Key("float", 0.5, low=0, high=1, low_open=True),   # moving rate
})


@RULES.register("EASGD")
class EASGD(ServerRule):
    name = "EASGD"
    period = "easgd.tau (Theano-MPI's EASGD avg_freq {k} is easgd.tau: {k} here)"

    def __init__(self, world, cfg):
        super().__init__(world, cfg)
        self.tau, self.alpha = cfg["easgd"]["tau"], cfg["easgd"]["alpha"]
        self.exchanges, self.finished = 0, False

    @classmethod
    def servers_in(cls, cfg):
        return 1

    def start(self, model):
        """Every worker and the center start from the server's parameters."""
        through_host(model.params, lambda params: self.world.comm.Bcast(params, root=0))
        self.center = host_like(model.params)
        if not self.is_server:
            self.wire = Wire(model.params)
            self.listen_for_drop()

    def after_update(self, model, step):
        if step % self.tau:
            return
        center = self.wire.buffer("center", model.params)
        self.world.comm.Sendrecv(self.wire.outgoing("params", model.params), dest=0,
                                 sendtag=EXCHANGE, recvbuf=center, source=0, recvtag=VALUES)
        center = self.wire.where(center, model.params, "center here")
        model.params -= self.alpha * (model.params - center)
        self.exchanges += 1

    def _fetch_center(self, tag):
        self.notify(0, tag)
        self.world.comm.Recv(self.center, source=0, tag=VALUES)

    @contextlib.contextmanager
    def evaluated(self, model):
        """The first worker evaluates the center (the others do not evaluate)."""
        if self.worker_rank != 0:
            yield
            return
        if not self.finished:
            self._fetch_center(FETCH)
        saved = model.params.copy()
        copy_into(model.params, self.center)
        try:
            yield
        finally:
            model.params[...] = saved

    def finish(self, model):
        """Tell the server this worker is done; the first worker waits for the final center."""
        if self.worker_rank == 0:
            self._fetch_center(DONE_FETCH)
        else:
            self.notify(0, DONE)
        self.finished = True
        self.listener.stop()

    def serve(self, model, optimizer, schedule, steps_per_epoch, save):
        comm, center = self.world.comm, model.params
        incoming = np.empty_like(center)

        def exchange(source, tag):
            comm.Recv(incoming, source=source, tag=EXCHANGE)
            comm.Send(center, dest=source, tag=VALUES)      # the center before the move
            np.subtract(incoming, center, out=incoming)
            np.multiply(incoming, self.alpha, out=incoming)
            np.add(center, incoming, out=center)
            self.exchanges += 1
        self.serve_workers(center, exchange, save)
