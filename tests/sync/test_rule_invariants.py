"""What EASGD and gossip conserve, under mpiexec with 3 workers, whatever the arrival order.

Each worker records D_i, the sum over its steps of what its own optimizer step moved its
parameters (``save_params.py --displacements``); the exchanges must move nothing else. Every
rank starts at x0 (the model the seed builds); the sums are checked in float64.
"""
import hickle
import numpy as np

from tests.sync.helpers import reference_setup, run_rule

FLOAT64 = ["dtype=float64", "batch_size=16", "epochs=3"]    # 30 steps per worker
CONSERVED = {"rtol": 0, "atol": 1e-12}     # float64 rounding: 1e-15 here; a lost term 1e-3+


def run_with_displacements(tmp_path, ranks, settings):
    """(params per rank, summary per rank, D_i per rank, weighted D_i per rank, x0)."""
    params, info = run_rule(tmp_path, ranks, FLOAT64 + settings, timeout=90,
                            faults=["--displacements"])
    moves = [dict(np.load(tmp_path / f"rank.{r}.moves.npz")) if i["role"] == "worker"
             else {"displacement": None, "weighted": None} for r, i in enumerate(info)]
    _, _, (model,), _ = reference_setup(FLOAT64 + settings)
    assert model.params.dtype == np.float64
    return (params, info, [m["displacement"] for m in moves], [m["weighted"] for m in moves],
            model.params.copy())


def test_easgd_keeps_the_center_plus_the_workers(tmp_path):
    """center + sum_i x_i = (N + 1) x0 + sum_i D_i with N = 3 workers: every exchange moves
    the worker by -d and the center by +d (the same d on both sides), so the center counts
    once, like each worker, and starts at x0 like them (the server's parameters are
    broadcast at start)."""
    params, info, moved, _, x0 = run_with_displacements(
        tmp_path, 4, ["sync_rule=EASGD", "easgd.tau=1", "easgd.alpha=0.3"])
    center, workers = params[0], params[1:]
    assert info[0]["role"] == "server" and info[0]["exchanges"] == 90
    np.testing.assert_allclose(center + sum(workers), 4 * x0 + sum(moved[1:]), **CONSERVED)
    assert np.abs(center - x0).max() > 1e-2                # the center did move


def test_elastic_gossip_keeps_the_workers_sum(tmp_path):
    """sum_i x_i = N x0 + sum_i D_i: each exchange moves the initiator by -alpha (s - r) and
    the responder by +alpha (s - r), s what the initiator sent, r what the responder
    replied. With p = 1 every worker starts an exchange every step, so workers answer others
    while they wait for their own reply (and move for them) and pick each other at once."""
    params, info, moved, _, x0 = run_with_displacements(
        tmp_path, 3, ["sync_rule=GOSSIP", "gossip.variant=elastic", "gossip.p=1",
                      "gossip.alpha=0.5"])
    assert sum(i["exchanges"] for i in info) == 90
    np.testing.assert_allclose(sum(params), 3 * x0 + sum(moved), **CONSERVED)


def test_gosgd_keeps_the_weighted_sum_and_exports_it(tmp_path):
    """Push-sum: with a_i(t) worker i's mixing weight when it takes its step t and dx_i(t)
    what that step moved it,

        sum_i a_i x_i = x0 + sum_i W_i,   W_i = sum_t a_i(t) dx_i(t),

    once nothing is in flight (the end): a send halves a_s and puts (a_s / 2, x_s) in flight,
    a receive turns a_r x_r + a_m x_m into (a_r + a_m) x_r', so neither changes
    sum_i a_i x_i + sum_messages a_m x_m, which starts at sum_i x0 / N = x0; a step adds
    a_i(t) dx_i(t). The exported (and validated) model is that weighted sum, not the mean."""
    params, info, _, weighted, x0 = run_with_displacements(
        tmp_path, 3, ["sync_rule=GOSSIP", "gossip.p=1", f"log.dir={tmp_path / 'run'}"])
    a = [i["weight"] for i in info]
    assert abs(sum(a) - 1) < 1e-12 and sum(i["exchanges"] for i in info) == 90
    weighted_sum = sum(a_i * x_i for a_i, x_i in zip(a, params))
    np.testing.assert_allclose(weighted_sum, x0 + sum(weighted), **CONSERVED)
    exported = hickle.load(str(tmp_path / "run" / "weights.hkl"))["params"]
    np.testing.assert_allclose(exported, weighted_sum / sum(a), rtol=0, atol=1e-13)
    assert np.abs(exported - sum(params) / 3).max() > 1e-6     # the weights differ
