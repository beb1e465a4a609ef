"""EASGD, Downpour and gossip over mpiexec: exact equations on small schedules, convergence."""
import numpy as np
import pytest

from sync.downpour import Downpour, shard_bounds
from tests.sync.helpers import reference_setup, run_rule, sgd_step


EXACT = {"rtol": 1e-5, "atol": 1e-6}


def test_easgd_with_one_worker_follows_the_elastic_equations(tmp_path):
    easgd_with_one_worker(tmp_path)


def easgd_with_one_worker(tmp_path, extra=(), tolerance=EXACT):
    """The run (with ``extra`` settings) against the equations computed here on the CPU."""
    settings = ["sync_rule=EASGD", "easgd.tau=2", "easgd.alpha=0.3", "batch_size=8",
                "max_steps=7"]
    (center, worker), (server_info, worker_info) = run_rule(tmp_path, 2, settings + list(extra))
    cfg, (data,), (model,), (optimizer,) = reference_setup(settings)
    expected_center = model.params.copy()
    for step, batch in zip(range(1, 8), data.train.epoch(0)):
        sgd_step(model, optimizer, batch, cfg["optimizer"]["lr"])
        if step % 2 == 0:
            d = 0.3 * (model.params - expected_center)
            model.params -= d
            expected_center += d
    np.testing.assert_allclose(worker, model.params, **tolerance)
    np.testing.assert_allclose(center, expected_center, **tolerance)
    assert server_info["role"] == "server" and server_info["exchanges"] == 3
    assert np.abs(center - worker).max() > 1e-4          # the elastic force is not a copy


def test_easgd_with_three_workers_converges(tmp_path):
    _, info = run_rule(tmp_path, 4, ["sync_rule=EASGD", "batch_size=16", "epochs=3",
                                     "easgd.tau=4"])
    assert info[1]["top1"] > 0.85                       # the center; chance is 0.1
    assert info[2]["top1"] is None and info[3]["top1"] is None   # only worker 0 evaluates


@pytest.mark.parametrize("servers", [1, 2])
def test_downpour_with_one_worker_and_pushing_every_step_is_plain_sgd(tmp_path, servers):
    downpour_with_one_worker(tmp_path, servers)


def downpour_with_one_worker(tmp_path, servers, extra=(), tolerance=EXACT):
    """The run (with ``extra`` settings) against plain SGD computed here on the CPU."""
    settings = ["sync_rule=DOWNPOUR", f"downpour.servers={servers}", "downpour.n_push=1",
                "downpour.n_fetch=1", "batch_size=8", "max_steps=6"]
    params, info = run_rule(tmp_path, servers + 1, settings + list(extra))
    cfg, (data,), (model,), (optimizer,) = reference_setup(settings)
    for _, batch in zip(range(6), data.train.epoch(0)):
        sgd_step(model, optimizer, batch, cfg["optimizer"]["lr"])
    bounds = shard_bounds(model.params.size, servers)
    served = np.concatenate([params[s][lo:hi] for s, (lo, hi) in enumerate(bounds)])
    np.testing.assert_allclose(served, model.params, **tolerance)
    np.testing.assert_allclose(params[servers], model.params, **tolerance)


def test_downpours_learning_rate_clock_follows_the_workers_still_running():
    rule = Downpour.__new__(Downpour)      # the clock alone, without MPI
    rule.servers, rule.num_workers, rule.n_push, rule.dropped = 1, 4, 2, []
    rule.pushes = np.array([234, 234, 234, 50])     # a push every 2 steps; 468 steps an epoch
    assert rule.epoch(468) == pytest.approx(752 * 2 / 4 / 468)
    rule.dropped = [4]                     # the 4th worker (rank 4) was lost at its step 100
    assert rule.epoch(468) == 1.0          # the schedule ends when the others do
    rule.dropped = [1, 2, 3, 4]            # a push from a dropped worker: every count
    assert rule.epoch(468) == pytest.approx(752 * 2 / 4 / 468)


@pytest.mark.parametrize("size, servers", [(10, 1), (10, 3), (7, 7), (1000003, 4)])
def test_downpour_shards_cover_the_buffer_exactly_once(size, servers):
    bounds = shard_bounds(size, servers)
    covered = np.concatenate([np.arange(lo, hi) for lo, hi in bounds])
    np.testing.assert_array_equal(covered, np.arange(size))
    lengths = [hi - lo for lo, hi in bounds]
    assert max(lengths) - min(lengths) <= 1


def test_downpour_with_two_servers_and_three_workers_converges(tmp_path):
    _, info = run_rule(tmp_path, 5, ["sync_rule=DOWNPOUR", "downpour.servers=2",
                                     "downpour.n_push=2", "downpour.n_fetch=2",
                                     "batch_size=16", "epochs=3"])
    assert [i["role"] for i in info] == ["server", "server", "worker", "worker", "worker"]
    assert info[2]["top1"] > 0.85


def test_gosgd_keeps_the_mixing_weights_summing_to_one_and_converges(tmp_path):
    gosgd_converges(tmp_path)


def gosgd_converges(tmp_path, extra=()):
    _, info = run_rule(tmp_path, 3, ["sync_rule=GOSSIP", "gossip.p=0.5", "batch_size=16",
                                     "epochs=3"] + list(extra))
    assert all(abs(i["weights_sum"] - 1) < 1e-12 for i in info)   # 1/3 is not exact
    assert sum(i["exchanges"] for i in info) > 10
    assert info[0]["top1"] > 0.85


def test_elastic_gossip_converges(tmp_path):
    elastic_gossip_converges(tmp_path)


def elastic_gossip_converges(tmp_path, extra=()):
    _, info = run_rule(tmp_path, 3, ["sync_rule=GOSSIP", "gossip.variant=elastic",
                                     "gossip.p=0.5", "batch_size=16", "epochs=3"] + list(extra))
    assert sum(i["exchanges"] for i in info) > 10
    assert info[0]["top1"] > 0.85
