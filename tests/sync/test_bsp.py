"""BSP over mpiexec equals one process over the union of the workers' batches."""
import numpy as np
import pytest

from tests.sync.helpers import reference_setup, run_rule, sgd_step


def run_workers(tmp_path, n, settings):
    return run_rule(tmp_path, n, settings)[0]


def reference(n, settings, steps, avg_freq=1):
    """n models in one process fed the batches of the n workers: one model stepping on the
    union of the batches (avg_freq 1), or n models averaged every avg_freq steps."""
    copies = 1 if avg_freq == 1 else n
    cfg, shards, models, optimizers = reference_setup(settings, shards=n, copies=copies)
    batches = [shard.train.epoch(0) for shard in shards]
    lr = cfg["optimizer"]["lr"]
    for step in range(1, steps + 1):
        pairs = [next(b) for b in batches]
        feeds = [(np.concatenate([x for x, _ in pairs]), np.concatenate([y for _, y in pairs]))] \
            if copies == 1 else pairs
        for model, optimizer, batch in zip(models, optimizers, feeds):
            sgd_step(model, optimizer, batch, lr)
        if copies > 1 and (step % avg_freq == 0 or step == steps):
            mean = np.mean([m.params for m in models], axis=0)
            for m in models:
                m.params[...] = mean
    return models[0].params


@pytest.mark.parametrize("n, exchange, method", [
    (2, ["exchange.method=ring"], "ring"), (2, ["exchange.method=allreduce"], "allreduce"),
    (2, ["exchange.method=shared"], "shared"), (4, [], "shared"),
    (3, ["exchange.method=ring", "exchange.bucket_mb=0.001"], "ring"),
    (3, ["exchange.bucket_mb=0.001"], "shared"),
    (2, ["exchange.bucket_mb=0.0005", "exchange.overlap=true", "model_options={hidden: [16, 8]}"],
     "shared"),
    (2, ["accumulate=2", "exchange.bucket_mb=0.0005", "exchange.overlap=true"], "shared"),
])
def test_bsp_workers_equal_one_process_with_n_times_the_batch(tmp_path, n, exchange, method):
    settings = ["batch_size=8", "max_steps=6", "exchange.ring_min_bytes=0",
                "exchange.shared_min_bytes=0"] + exchange
    workers, summaries = run_rule(tmp_path, n, settings)
    assert {s["exchange"] for s in summaries} == {method}
    assert all(s["shared"] for s in summaries) == (method == "shared")
    expected = reference(n, settings, steps=6)
    for params in workers:
        np.testing.assert_array_equal(params, workers[0])        # identical on every worker
    np.testing.assert_allclose(workers[0], expected, rtol=2e-5, atol=2e-6)
    start = reference(n, settings, steps=0)
    assert np.abs(expected - start).max() > 1e-2                  # it did train


@pytest.mark.parametrize("method", ["allreduce", "shared"])
def test_parameter_averaging_every_k_steps_matches_the_reference(tmp_path, method):
    settings = ["batch_size=8", "max_steps=7", "avg_freq=3", f"exchange.method={method}"]
    workers, summaries = run_rule(tmp_path, 2, settings)
    assert all(s["shared"] for s in summaries) == (method == "shared")
    expected = reference(2, settings, steps=7, avg_freq=3)
    np.testing.assert_array_equal(workers[0], workers[1])
    np.testing.assert_allclose(workers[0], expected, rtol=2e-5, atol=2e-6)
    plain = reference(2, settings, steps=7)                        # gradient averaging differs
    assert np.abs(plain - expected).max() > 1e-4


def test_float16_on_the_wire_stays_close_and_identical_on_all_workers(tmp_path):
    settings = ["batch_size=8", "max_steps=6", "exchange.wire=float16"]
    workers = run_workers(tmp_path, 2, settings)
    np.testing.assert_array_equal(workers[0], workers[1])
    np.testing.assert_allclose(workers[0], reference(2, settings, steps=6), atol=2e-3)


def test_an_error_on_one_rank_ends_every_rank_quickly(tmp_path):
    import time
    from tests.mpi import ROOT, run_mpi
    from tests.sync.helpers import COMMON
    args = [ROOT / "tests" / "sync" / "save_params.py", tmp_path / "p", "--fail", "1:3"]
    for s in COMMON + ["batch_size=8", "epochs=3"]:
        args += ["--set", s]
    tick = time.perf_counter()
    done = run_mpi(2, args, timeout=60)
    elapsed = time.perf_counter() - tick
    assert done.returncode != 0
    assert "rank 1 of 2 failed" in done.stderr and "injected failure" in done.stderr
    assert elapsed < 30                      # rank 0 did not wait in the next exchange


def test_ranks_that_disagree_on_the_model_stop_with_one_message(tmp_path):
    from tests.mpi import ROOT, run_mpi
    from tests.sync.helpers import COMMON
    args = [ROOT / "tests" / "sync" / "save_params.py", tmp_path / "p",
            "--rank-set", "1:model_options={hidden: [17]}"]
    for s in COMMON + ["batch_size=8", "max_steps=2"]:
        args += ["--set", s]
    done = run_mpi(2, args, timeout=60)
    assert done.returncode != 0
    assert "rank 1 on host " in done.stderr and "disagrees with rank 0 on host" in done.stderr
    assert "parameters 1421 (rank 0: 1338)" in done.stderr


def test_more_servers_than_ranks_is_a_config_error_on_every_rank(tmp_path):
    from tests.mpi import ROOT, run_mpi
    done = run_mpi(2, ["-m", "engine.train", ROOT / "config.yaml", "--set",
                       "sync_rule=DOWNPOUR", "--set", "downpour.servers=2"], timeout=60)
    assert done.returncode == 2
    assert done.stderr.count("needs more than 2 ranks") == 2


SYNC_BN = ["model=inception_small", "model_options={width: 0.1}", "dtype=float64",
           "data.image_size=8", "data.channels=2", "batch_size=4", "max_steps=4",
           "optimizer.lr=0.1"]


@pytest.mark.parametrize("n", [2, 3])
def test_synchronized_batchnorm_makes_bsp_one_process_with_n_times_the_batch(tmp_path, n):
    workers, _ = run_rule(tmp_path, n, SYNC_BN + ["sync_bn=true"])
    expected = reference(n, SYNC_BN, steps=4)
    for params in workers:
        np.testing.assert_array_equal(params, workers[0])
    np.testing.assert_allclose(workers[0], expected, rtol=1e-10, atol=1e-12)
    assert np.abs(expected - reference(n, SYNC_BN, steps=0)).max() > 1e-2   # it did train


def test_without_synchronized_batchnorm_the_statistics_are_each_worker_s(tmp_path):
    workers, _ = run_rule(tmp_path, 2, SYNC_BN)
    assert np.abs(workers[0] - reference(2, SYNC_BN, steps=4)).max() > 1e-6


def test_nccl_refuses_two_workers_on_one_gpu_naming_them():
    from sync.bsp import shared_gpus
    assert shared_gpus([("a", "0000:01"), ("a", "0000:02"), ("b", "0000:01")]) == ""
    assert shared_gpus([("a", "0000:01"), ("a", "0000:02"), ("a", "0000:01")]) == \
        "workers 0, 2 share GPU 0000:01 on a"
