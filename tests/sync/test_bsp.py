"""BSP over mpiexec equals one process over the union of the workers' batches."""
import numpy as np
import pytest

from engine.models import build_model
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


@pytest.mark.parametrize("n, method", [(2, "ring"), (2, "allreduce"), (4, "auto")])
def test_bsp_workers_equal_one_process_with_n_times_the_batch(tmp_path, n, method):
    settings = ["batch_size=8", "max_steps=6", f"exchange.method={method}",
                "exchange.ring_min_bytes=0"]
    workers = run_workers(tmp_path, n, settings)
    expected = reference(n, settings, steps=6)
    for params in workers:
        np.testing.assert_array_equal(params, workers[0])        # identical on every worker
    np.testing.assert_allclose(workers[0], expected, rtol=2e-5, atol=2e-6)
    start = build_model("mlp", {"in_channels": 2, "num_classes": 10, "image_size": 6,
                                "hidden": [16]}, "float32", 3).params
    assert np.abs(expected - start).max() > 1e-2                  # it did train


def test_parameter_averaging_every_k_steps_matches_the_reference(tmp_path):
    settings = ["batch_size=8", "max_steps=7", "avg_freq=3"]
    workers = run_workers(tmp_path, 2, settings)
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
