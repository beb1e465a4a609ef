"""Each rule's moves against its equations written out here, in float64.

EASGD, GoSGD and Elastic Gossip run in this process on a quadratic loss, f_i(x) =
0.5 sum h_i (x - c_i)^2 for worker i, their messages carried by ``Network`` (a stand-in for
MPI) in an order the test scripts. Downpour runs under mpiexec with one worker, against Dean
et al. 2012's Algorithm 7.1.
"""
import types

import numpy as np
import pytest
from mpi4py import MPI

from core.config import load_config
from core.errors import ConfigError
from sync.downpour import Downpour
from sync.easgd import EASGD
from sync.gossip import Gossip
from sync.tags import EASGD_EXCHANGE
from sync.wire import Wire
from tests.sync.helpers import reference_setup, run_rule

EXACT = {"rtol": 1e-13, "atol": 0}
LR = 0.1


# -- the stand-in for MPI -------------------------------------------------------------------
class Network:
    """Messages among the ranks of one test: each is in flight from its send until
    ``deliver()``, then waits to be received. A rank that waits for a message not there yet
    runs the next event of ``script`` (another rank's action, a delivery): the script is the
    order in which things happen, and a wait it cannot end fails the test."""

    def __init__(self):
        self.in_flight, self.arrived, self.script = [], [], []

    def deliver(self):
        self.arrived += self.in_flight
        self.in_flight = []

    def idle(self):
        assert self.script, "a rank waits for a message the script never brings"
        self.script.pop(0)()

    def take(self, source, dest, tag):
        """The payload of the first arrived message that matches, removed; None if none."""
        for i, (s, d, t, payload) in enumerate(self.arrived):
            if d == dest and t == tag and source in (s, MPI.ANY_SOURCE):
                return self.arrived.pop(i)[3]
        return None


class Request:
    def __init__(self, network, complete):
        self.network, self.complete, self.done = network, complete, False

    def Test(self):
        """Done, or else let the script go on one event and look again."""
        if not self.done:
            self.done = self.complete()
        if not self.done:
            self.network.idle()
            self.done = self.complete()
        return self.done


class Comm:
    """What the rules call on a communicator, for rank ``rank`` of ``network``."""

    def __init__(self, network, rank):
        self.network, self.rank = network, rank

    def Split(self, color, key):
        return self

    def Bcast(self, buf, root):
        """Nothing: each rank keeps the parameters the test gave it."""

    def Send(self, buf, dest, tag):
        self.network.in_flight.append((self.rank, dest, tag, np.array(buf, copy=True)))

    def Isend(self, buf, dest, tag):
        self.Send(buf, dest, tag)
        return Request(self.network, lambda: True)

    def Iprobe(self, source, tag, status):
        for s, d, t, _ in self.network.arrived:
            if d == self.rank and t == tag and source in (s, MPI.ANY_SOURCE):
                status.Set_source(s)
                return True
        return False

    def Recv(self, buf, source, tag):
        while (payload := self.network.take(source, self.rank, tag)) is None:
            self.network.idle()
        buf[...] = payload

    def Irecv(self, buf, source, tag):
        def arrived():
            payload = self.network.take(source, self.rank, tag)
            if payload is not None:
                buf[...] = payload
            return payload is not None
        return Request(self.network, arrived)

    def Sendrecv(self, sendbuf, dest, sendtag, recvbuf, source, recvtag):
        self.Send(sendbuf, dest, sendtag)
        self.Recv(recvbuf, source, recvtag)


def build(cls, network, rank, size, settings):
    world = types.SimpleNamespace(rank=rank, size=size, comm=Comm(network, rank))
    return cls(world, load_config(None, settings))


class Worker:
    """A worker's model on its quadratic: ``step()`` is one SGD step, x <- x - lr h (x - c)."""

    def __init__(self, x, seed):
        rng = np.random.default_rng(seed)
        self.model = types.SimpleNamespace(params=np.array(x, np.float64), state=dict)
        self.h, self.c = rng.uniform(0.5, 2.0, len(x)), rng.standard_normal(len(x))

    def step(self):
        self.model.params -= LR * self.h * (self.model.params - self.c)

    def stepped(self, x):
        """The same step on a copy of ``x``: the equations' side."""
        return x - LR * self.h * (x - self.c)


def start_points(n, size=5, seed=0):
    return list(np.random.default_rng(seed).standard_normal((n, size)))


# -- EASGD ----------------------------------------------------------------------------------
def easgd(network, tau, alpha, x0):
    """Server rank 0 (its exchange handler) and two workers (ranks 1, 2), all at ``x0``."""
    settings = ["sync_rule=EASGD", f"easgd.tau={tau}", f"easgd.alpha={alpha}"]
    server = build(EASGD, network, 0, 3, settings)
    handlers = []
    server.serve_workers = lambda values, handle, save: handlers.append(handle)
    center = types.SimpleNamespace(params=x0.copy())
    server.serve(center, None, None, None, None)
    workers = [Worker(x0, seed) for seed in (1, 2)]
    rules = [build(EASGD, network, rank, 3, settings) for rank in (1, 2)]
    for rule, worker in zip(rules, workers):
        rule.wire = Wire(worker.model.params)

    def serve(rank):           # the server answers ``rank``'s message, now
        network.deliver()
        handlers[0](rank, EASGD_EXCHANGE)
        network.deliver()
    return center, workers, rules, serve


@pytest.mark.parametrize("tau", [1, 2])
def test_easgd_moves_worker_and_center_by_the_same_elastic_difference(tau):
    """Worker 1 sends first but the server answers worker 2 first (it took its step and sent
    while worker 1 waited): d_i = alpha (x_i - x~), x_i -= d_i, x~ += d_i, in the server's
    order, each d from the center the worker received (the one before its own move)."""
    network, alpha, x0 = Network(), 0.3, start_points(1)[0]
    center, (w1, w2), (r1, r2), serve = easgd(network, tau, alpha, x0)
    x1, x2, xc = x0.copy(), x0.copy(), x0.copy()
    for step in range(1, 7):
        w1.step()
        x1 = w1.stepped(x1)
        if step % tau:
            w2.step()
            r1.after_update(w1.model, step)            # no exchange due: nothing sent
            r2.after_update(w2.model, step)
            x2 = w2.stepped(x2)
            continue
        network.script = [lambda: (w2.step(), r2.after_update(w2.model, step)),
                          lambda: serve(2), lambda: serve(1)]
        r1.after_update(w1.model, step)           # waits: worker 2 steps, both are served
        x2 = w2.stepped(x2)
        for x in (x2, x1):                         # the server's order
            d = alpha * (x - xc)
            x -= d
            xc = xc + d
        assert not network.script
    np.testing.assert_allclose(w1.model.params, x1, **EXACT)
    np.testing.assert_allclose(w2.model.params, x2, **EXACT)
    np.testing.assert_allclose(center.params, xc, **EXACT)
    assert r1.exchanges == r2.exchanges == 6 // tau


# -- gossip ---------------------------------------------------------------------------------
class ScriptedPeers:
    """A gossip worker's random numbers, scripted: each ``after_update`` takes the next of
    ``peers`` (a worker rank, or None for no exchange)."""

    def __init__(self, rank, peers):
        self.rank, self.peers, self.peer = rank, list(peers), None

    def random(self):
        self.peer = self.peers.pop(0)
        return 1.0 if self.peer is None else 0.0     # p = 1: 1.0 means no exchange

    def integers(self, n):
        return self.peer - (self.peer > self.rank)  # Gossip._peer's index of that rank


def gossip(network, variant, xs, peers, alpha=0.3):
    """Workers at ``xs``, with their scripted ``peers`` (one list per worker)."""
    settings = ["sync_rule=GOSSIP", f"gossip.variant={variant}", "gossip.p=1",
                f"gossip.alpha={alpha}"]
    workers = [Worker(x, seed) for seed, x in enumerate(xs)]
    rules = [build(Gossip, network, rank, len(xs), settings) for rank in range(len(xs))]
    for rank, (rule, worker) in enumerate(zip(rules, workers)):
        rule.rng = ScriptedPeers(rank, peers[rank])
        rule.start(worker.model)
    return workers, rules


def test_elastic_gossip_answering_while_waiting_moves_by_what_was_sent():
    """A (0) asks B (1); C's (2) request to A arrives while A waits, and A replies to it and
    moves; then B steps and replies. With s what an initiator sent and r the reply, the
    responder moves by +alpha (s - r) and the initiator by -alpha (s - r) from the s it sent
    (not from where answering C left it), so both pairs keep their sums."""
    network, alpha, xs = Network(), 0.3, start_points(3)
    (a, b, c), (ra, rb, rc) = gossip(network, "elastic", xs, [[1], [None], [0]])
    for worker in (a, c):
        worker.step()
    s_a, s_c = a.model.params.copy(), c.model.params.copy()
    network.script = [
        lambda: ra.after_update(a.model, 1),          # A asks B, waits (C waits on A):
        network.deliver,                              #   A gets C's request: replies, moves
        network.deliver,                              #   C's reply is there (not yet read)
        lambda: (b.step(), rb.after_update(b.model, 1)),   # B replies to A, moves
        network.deliver]                              #   A gets B's reply, moves
    rc.after_update(c.model, 1)                       # C asks A; C reads its reply last
    assert not network.script
    r_a, r_b = s_a, b.stepped(xs[1])                  # A had not moved when it replied
    a_after_c = r_a + alpha * (s_c - r_a)
    expected = [a_after_c - alpha * (s_a - r_b), r_b + alpha * (s_a - r_b),
                s_c - alpha * (s_c - r_a)]
    for worker, x in zip((a, b, c), expected):
        np.testing.assert_allclose(worker.model.params, x, **EXACT)
    np.testing.assert_allclose(sum(w.model.params for w in (a, b, c)), s_a + r_b + s_c,
                               **EXACT)


def test_elastic_gossip_mutual_picks_are_two_exchanges_that_keep_the_sum():
    """A (0) and B (1) ask each other at once: each answers the other's request while it
    waits for its own reply (``_answer``, called here for A as its wait loop would: A's own
    frame is suspended under B's in this one thread), so each takes a responder's move and an
    initiator's, 2 alpha (s_other - s_own) in all, and nobody waits forever."""
    network, alpha, xs = Network(), 0.3, start_points(3)
    (a, b, _), (ra, rb, _) = gossip(network, "elastic", xs, [[1], [0], []])
    s_a, s_b = a.model.params.copy(), b.model.params.copy()
    network.script = [
        lambda: rb.after_update(b.model, 1),   # B asks A, waits:
        network.deliver,                       #   both requests arrive; B replies to A, moves
        ra._answer,                            #   A (waiting) replies to B, moves
        network.deliver]                       #   B gets A's reply, moves; then A gets B's
    ra.after_update(a.model, 1)                # A asks B, waits
    assert not network.script
    a_answered, b_answered = s_a + alpha * (s_b - s_a), s_b + alpha * (s_a - s_b)
    np.testing.assert_allclose(a.model.params, a_answered - alpha * (s_a - s_b), **EXACT)
    np.testing.assert_allclose(b.model.params, b_answered - alpha * (s_b - s_a), **EXACT)
    np.testing.assert_allclose(a.model.params, s_a + 2 * alpha * (s_b - s_a), **EXACT)
    np.testing.assert_allclose(a.model.params + b.model.params, s_a + s_b, **EXACT)


def test_gosgd_mixes_by_the_push_sum_equations():
    """Scripted peers, messages delivered a round late (two reach worker 2 in one round):
    the sender halves a_s and sends (a_s, x_s) as it is then; the receiver mixes
    x_r <- (a_r x_r + a_s x_s) / (a_r + a_s), a_r <- a_r + a_s. The weights end summing to 1
    and sum_i a_i x_i is what the equations say."""
    network, xs = Network(), start_points(3)
    workers, rules = gossip(network, "gosgd", xs, [[2, 1, None, None], [2, None, 0, None],
                                                   [None, 0, None, None]])
    x, a = [x.copy() for x in xs], [1 / 3] * 3
    in_flight = []

    def mix(r, weight, sent):
        x[r] = (a[r] * x[r] + weight * sent) / (a[r] + weight)
        a[r] += weight
    for step in range(1, 5):
        for rank, (worker, rule) in enumerate(zip(workers, rules)):
            worker.step()
            x[rank] = worker.stepped(x[rank])
        arrived, in_flight = in_flight, []
        for rank, rule in enumerate(rules):
            for _, weight, sent in [m for m in arrived if m[0] == rank]:
                mix(rank, weight, sent)               # received first (after_update's _answer)
            peer = rule.rng.peers[0] if rule.rng.peers else None
            rule.after_update(workers[rank].model, step)
            if peer is not None:
                a[rank] /= 2
                in_flight.append((peer, a[rank], x[rank].copy()))
        network.deliver()
    assert not in_flight
    for rank, rule in enumerate(rules):
        np.testing.assert_allclose(workers[rank].model.params, x[rank], **EXACT)
        assert rule.weight == pytest.approx(a[rank], rel=1e-15)
    assert sum(a) == pytest.approx(1, rel=1e-15) and sum(r.exchanges for r in rules) == 5


# -- Downpour -------------------------------------------------------------------------------
DEAN = ["sync_rule=DOWNPOUR", "downpour.servers=1", "downpour.n_push=2", "downpour.n_fetch=3",
        "dtype=float64", "batch_size=8", "max_steps=7", "optimizer.weight_decay=0.01"]


def sgd_server(server, pushed, lr, eps, state):
    server -= lr * pushed


def adagrad_server(server, pushed, lr, eps, state):
    state["s"] = state.get("s", 0) + pushed ** 2
    server -= lr * pushed / (np.sqrt(state["s"]) + eps)


def algorithm_7_1(settings, server_update, skipped=()):
    """Dean et al. 2012, Algorithm 7.1 (DownpourSGDClient), one client, read sequentially:
    (server parameters, client parameters) at the end. Steps s count from 0 as there; the
    gradient is the regularised loss's. The one difference, stated in sync/downpour.py: the
    push follows step s when (s + 1) mod n_push == 0 (Dean: s mod n_push == 0), and the end
    pushes the rest. A step in ``skipped`` (non-finite) adds nothing; no push or fetch may
    fall due right after it (the driver's after_update, skipped with it, does both)."""
    cfg, (data,), (model,), _ = reference_setup(settings)
    lr, wd, eps = (cfg["optimizer"][k] for k in ("lr", "weight_decay", "eps"))
    n_fetch, n_push = cfg["downpour"]["n_fetch"], cfg["downpour"]["n_push"]
    parameters, server, state = model.params, model.params.copy(), {}
    accrued = np.zeros_like(server)
    for step, (x, y) in zip(range(cfg["max_steps"]), data.train.epoch(0)):
        if step % n_fetch == 0:
            parameters[...] = server                          # fetch
        if step in skipped:
            continue
        model.forward_loss(x, y)
        model.backward()
        gradient = model.grads + wd * parameters
        accrued += gradient
        parameters -= lr * gradient                           # the client's plain SGD
        if (step + 1) % n_push == 0:
            server_update(server, accrued, lr, eps, state)    # push
            accrued[...] = 0
    if accrued.any():
        server_update(server, accrued, lr, eps, state)
    return server, parameters


@pytest.mark.parametrize("dean, update", [("sgd", sgd_server), ("adagrad", adagrad_server)])
def test_downpour_dean_is_algorithm_7_1(tmp_path, dean, update):
    """One worker, n_push = 2, n_fetch = 3, weight decay on; ``downpour.dean`` sets aside
    the configured momentum on both sides."""
    settings = DEAN + [f"downpour.dean={dean}"]
    (server, worker), _ = run_rule(tmp_path, 2, settings, timeout=60)
    expected_server, expected_worker = algorithm_7_1(settings, update)
    np.testing.assert_allclose(server, expected_server, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(worker, expected_worker, rtol=1e-10, atol=1e-12)


def test_downpour_skips_a_nan_gradient_without_pushing_it(tmp_path):
    """Under ``on_nonfinite: skip`` the worker's gradient turns NaN at its step 5: the step
    is skipped, the servers stay finite, the run goes on, and what was pushed is the
    algorithm without that step."""
    settings = DEAN + ["downpour.dean=sgd", "on_nonfinite=skip"]
    (server, worker), info = run_rule(tmp_path, 2, settings, timeout=60, faults=["--nan", "1:5"])
    assert info[1]["skipped"] == 1 and np.isfinite(server).all() and np.isfinite(worker).all()
    expected_server, expected_worker = algorithm_7_1(settings, sgd_server, skipped={4})
    np.testing.assert_allclose(server, expected_server, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(worker, expected_worker, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dean, server, worker", [
    (None, {"name": "sgd", "momentum": 0.9, "weight_decay": 0.0},
     {"name": "sgd", "momentum": 0.9, "weight_decay": 0.01}),
    ("sgd", {"name": "sgd", "momentum": 0.0, "weight_decay": 0.0},
     {"name": "sgd", "momentum": 0.0, "weight_decay": 0.01}),
    ("adagrad", {"name": "adagrad", "momentum": 0.0, "weight_decay": 0.0},
     {"name": "sgd", "momentum": 0.0, "weight_decay": 0.01})])
def test_downpour_servers_add_no_weight_decay_and_dean_takes_plain_sgd(dean, server, worker):
    cfg = load_config(None, ["sync_rule=DOWNPOUR", "optimizer.momentum=0.9",
                             "optimizer.weight_decay=0.01"] +
                      ([f"downpour.dean={dean}"] if dean else []))
    for is_server, expected in ((True, server), (False, worker)):
        rule = Downpour.__new__(Downpour)
        rule.is_server, rule.dean = is_server, dean
        section = rule.optimizer_section(cfg["optimizer"])
        assert {key: section[key] for key in expected} == expected
    with pytest.raises(ConfigError, match="downpour.dean: str 'adam' is not allowed; "
                                          "allowed values: sgd, adagrad"):
        load_config(None, ["sync_rule=DOWNPOUR", "downpour.dean=adam"])
