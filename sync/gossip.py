"""Gossip: workers average with one random peer at a time, with no server and no barrier.

After each update, with probability ``p`` a worker picks a peer uniformly among the others.

- ``variant: gosgd`` (Blot et al. 2016, GoSGD; push-sum): every worker carries a mixing
  weight a_i (1/n at start). The sender halves its weight and sends (x_s, a_s); the receiver
  mixes ``x_r <- (a_r x_r + a_s x_s) / (a_r + a_s)``, ``a_r <- a_r + a_s``. Messages are
  one-way. Sending and receiving keep sum_i a_i x_i (messages in flight included) and
  sum_i a_i = 1; a worker's own step dx_i adds a_i dx_i to the sum. The consensus model,
  validated and exported, is therefore the weighted sum sum_i a_i x_i (divided by sum_i a_i,
  which is 1 once nothing is in flight, up to rounding), not the plain mean.
- ``variant: elastic`` (Elastic Gossip, Pramod 2018, arXiv 1812.02407): the initiator i sends
  s = x_i and waits for the reply r = x_j, the peer's value when it answers; then

      responder j:   x_j <- x_j + alpha (s - r)     (at once, r being the value it replied)
      initiator i:   x_i <- x_i - alpha (s - r)     (when the reply arrives)

  so every exchange keeps the pair's sum exactly, whatever else happens in between: an
  initiator keeps answering others while it waits (and moves for them), and still applies
  the d it shares with its peer. Two workers that pick each other at once make two
  exchanges, each answering the other's request while waiting for its own reply: each moves
  by about 2 alpha (x_j - x_i) (at alpha = 0.5 they swap values), the sum kept. The paper's
  workers consider an exchange once per communication period tau; here there is no period:
  every step, with probability ``p`` (tau = 1).

A worker that waits (for its own send, a reply, or the end) keeps answering the others, so no
cycle of waiting workers can form. With the parameters on a GPU, messages go from and to device
memory through a CUDA-aware MPI, else through pinned host buffers (``sync/wire.py``).
Validation evaluates the consensus model (GoSGD's weighted sum, Elastic Gossip's plain average;
BatchNorm statistics, which are not gossiped, averaged plainly) after all have reached the end
of the epoch.
"""
import contextlib

import numpy as np

from core.config import Key, register_section
from core.registry import RULES
from layers.backend import copy_into
from sync.rule import SyncRule, through_host
from sync.tags import (GOSSIP_PARAMS as PARAMS, GOSSIP_REPLY as REPLY,
                       GOSSIP_REQUEST as REQUEST, GOSSIP_WEIGHT as WEIGHT)
from sync.wire import Wire

register_section("gossip", {
    "variant": Key("str", "gosgd", choices=("gosgd", "elastic")),
    "p": Key("float", 0.1, low=0, high=1, low_open=True),       # exchange probability
    "alpha": Key("float", 0.5, low=0, high=1, low_open=True),   # elastic moving rate
})


@RULES.register("GOSSIP")
class Gossip(SyncRule):
    name = "GOSSIP"
    period = "gossip.p (the probability of an exchange per step)"

    def __init__(self, world, cfg):
        super().__init__(world, cfg)
        options = cfg["gossip"]
        self.variant, self.p, self.alpha = options["variant"], options["p"], options["alpha"]
        self.rng = np.random.default_rng([cfg["seed"], world.rank, 4])
        self.weight = 1.0 / self.num_workers
        self.sent = np.zeros(self.num_workers, np.int64)
        self.received = self.exchanges = 0
        self.pending = None

    # -- messages ---------------------------------------------------------------------------
    def start(self, model):
        super().start(model)
        self.model, self.wire = model, Wire(model.params)
        self.outgoing = self.wire.buffer("outgoing", model.params)
        self.incoming = self.wire.buffer("incoming", model.params)   # what others send us
        self.reply = self.wire.buffer("reply", model.params)   # a peer's answer to a request

    def _answer(self, blocking=False):
        """Receive (gosgd) or answer (elastic) what other workers sent; True if anything."""
        from mpi4py import MPI
        comm, status, any_ = self.workers, MPI.Status(), False
        tag = WEIGHT if self.variant == "gosgd" else REQUEST
        while blocking or comm.Iprobe(MPI.ANY_SOURCE, tag, status):
            if blocking:
                comm.Probe(MPI.ANY_SOURCE, tag, status)
                blocking = False
            source, any_ = status.Get_source(), True
            if self.variant == "gosgd":
                self._mix(source)
            else:
                self._reply(source)
        return any_

    def _mix(self, source):
        """GoSGD's receiver: x_r <- (a_r x_r + a_s x_s) / (a_r + a_s), a_r <- a_r + a_s."""
        comm, params, weight = self.workers, self.model.params, np.empty(1)
        comm.Recv(weight, source=source, tag=WEIGHT)
        comm.Recv(self.incoming, source=source, tag=PARAMS)
        params *= self.weight / (self.weight + weight[0])
        params += (weight[0] / (self.weight + weight[0])) * self.wire.where(
            self.incoming, params, "incoming here")
        self.weight += float(weight[0])
        self.received += 1

    def _reply(self, source):
        """Elastic Gossip's responder: reply r = x_j, then x_j <- x_j + alpha (s - r)."""
        comm, params = self.workers, self.model.params
        comm.Recv(self.incoming, source=source, tag=REQUEST)
        comm.Send(self.wire.outgoing("answer", params), dest=source, tag=REPLY)
        sent = self.wire.where(self.incoming, params, "incoming here")
        params += self.alpha * (sent - params)          # params is r until this line

    def while_waiting(self):
        """Answer the others while waiting for them to meet (a peer may wait for a reply)."""
        if getattr(self, "model", None) is not None:
            self._answer()

    def _wait(self, request):
        """Complete ``request`` while answering the others."""
        while not request.Test():
            self._answer()

    def _peer(self):
        peer = int(self.rng.integers(self.num_workers - 1))
        return peer + (peer >= self.worker_rank)

    def after_update(self, model, step):
        self._answer()
        if self.num_workers == 1 or self.rng.random() >= self.p:
            return
        peer, comm = self._peer(), self.workers
        if self.pending is not None:
            self._wait(self.pending)
        copy_into(self.outgoing, model.params)
        self.wire.ready(self.outgoing)
        if self.variant == "gosgd":
            self.weight /= 2
            comm.Send(np.array([self.weight]), dest=peer, tag=WEIGHT)
            self.pending = comm.Isend(self.outgoing, dest=peer, tag=PARAMS)
            self.sent[peer] += 1
        else:
            request = comm.Isend(self.outgoing, dest=peer, tag=REQUEST)
            reply = comm.Irecv(self.reply, source=peer, tag=REPLY)
            self._wait(reply)                 # answering others (and moving) meanwhile
            self._wait(request)
            sent = self.wire.where(self.outgoing, model.params, "sent here")
            model.params -= self.alpha * (sent - self.wire.where(self.reply, model.params,
                                                                 "reply here"))
        self.exchanges += 1

    def quiesce(self):
        """Wait until every worker is here, answering the others meanwhile; for gosgd, then
        receive every message still in flight."""
        if self.num_workers == 1:
            return
        if self.pending is not None:
            self._wait(self.pending)
            self.pending = None
        self._wait(self.workers.Ibarrier())
        if self.variant == "gosgd":
            expected = np.empty_like(self.sent)
            self.workers.Alltoall(self.sent, expected)
            while self.received < expected.sum():
                self._answer(blocking=True)
            self.sent[...] = 0
            self.received = 0

    def state_dict(self):
        return {"weight": np.array([self.weight])}

    def load_state_dict(self, state):
        self.weight = float(state["weight"][0])

    def save_checkpoint(self, folder, save):
        self.quiesce()                      # no mixing weight may be in flight
        return super().save_checkpoint(folder, save)

    def weights_sum(self):
        """Sum of the gosgd mixing weights over the workers (1 when nothing is in flight)."""
        return float(self.worker_sum([self.weight])[0])

    def consensus(self, params):
        """GoSGD: sum_i a_i x_i / sum_i a_i (module docstring); elastic: the plain mean."""
        if self.variant != "gosgd" or self.num_workers == 1:
            super().consensus(params)
            return
        from mpi4py import MPI
        params *= params.dtype.type(self.weight / self.weights_sum())
        through_host(params, lambda b: self.workers.Allreduce(MPI.IN_PLACE, b, op=MPI.SUM))

    @contextlib.contextmanager
    def evaluated(self, model):
        self.quiesce()
        with super().evaluated(model):
            yield

    def finish(self, model):
        self.quiesce()
