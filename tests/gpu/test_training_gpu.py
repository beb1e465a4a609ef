"""Whole models, training, memory and BSP on the GPU."""
import numpy as np
import pytest

from core.config import load_config
from core.models import build_model
from core.optimizers import SGD
from layers.dropout import Dropout
from tests.sync.helpers import reference_setup, run_rule, sgd_step

MODELS = [("inception_small", {"width": 0.25}, (8, 3, 28, 28)),
          ("googlenet", {"image_size": 96, "num_classes": 10}, (4, 3, 96, 96)),
          ("alexnet", {"image_size": 99, "width": 0.25, "num_classes": 10}, (4, 3, 99, 99)),
          ("vgg16", {"image_size": 32, "width": 0.125, "num_classes": 10}, (4, 3, 32, 32)),
          ("resnet50", {"width": 0.25, "num_classes": 10}, (4, 3, 64, 64)),
          ("resnet20", {}, (8, 3, 32, 32))]


def step(model, x, labels):
    loss, logits = model.forward_loss(x, labels)
    model.backward()
    return loss, logits


@pytest.mark.parametrize("name, options, shape", MODELS, ids=[m[0] for m in MODELS])
def test_a_model_step_on_cupy_equals_numpy_in_float64(cupy, name, options, shape):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape)
    labels = rng.integers(0, 10, size=shape[0])
    results = []
    for xp in (np, cupy):
        model = build_model(name, options, dtype="float64", seed=1, xp=xp)
        for layer in model.leaves():
            if isinstance(layer, Dropout):       # its masks differ by route (drawn on the GPU)
                layer.ratio = 0.0
        loss, logits = step(model, xp.asarray(x), xp.asarray(labels))
        results.append((float(loss), cupy.asnumpy(logits) if xp is cupy else logits,
                        cupy.asnumpy(model.grads) if xp is cupy else model.grads))
    (loss0, logits0, grads0), (loss1, logits1, grads1) = results
    assert loss1 == pytest.approx(loss0, rel=1e-9)
    np.testing.assert_allclose(logits1, logits0, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(grads1, grads0, rtol=1e-7, atol=1e-10)


def test_no_training_step_allocates_after_the_first(cupy):
    """The memory pool serves every step after warm-up from memory it already holds."""
    pool = cupy.get_default_memory_pool()
    model = build_model("googlenet", {"image_size": 96, "num_classes": 10}, seed=0, xp=cupy)
    optimizer = SGD(momentum=0.9, weight_decay=5e-4)
    rng = np.random.default_rng(0)
    x = cupy.asarray(rng.standard_normal((16, 3, 96, 96)).astype(np.float32))
    labels = cupy.asarray(rng.integers(0, 10, size=16))
    held = []
    for _ in range(5):
        step(model, x, labels)
        optimizer.step(model.params, model.grads, lr=0.01)
        cupy.cuda.get_current_stream().synchronize()
        held.append(pool.total_bytes())
    assert held[1] == held[2] == held[3] == held[4], held


def test_tf32_switches_float32_products_and_back(cupy):
    from core.device import array_module, set_tf32
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((512, 512)).astype(np.float32) for _ in range(2))
    exact = a.astype(np.float64) @ b.astype(np.float64)
    errors = {}
    for tf32 in (True, False):
        array_module("gpu", tf32=tf32)
        got = cupy.asnumpy(cupy.asarray(a) @ cupy.asarray(b)).astype(np.float64)
        errors[tf32] = np.abs(got - exact).max() / np.abs(exact).max()
    set_tf32(cupy, False)
    assert errors[False] < 1e-5 < errors[True] < 1e-2, errors


def test_training_on_the_gpu_runs_and_learns(cupy):
    from engine.train import train
    cfg = load_config(None, ["device=gpu", "model=inception_small",
                             "model_options={width: 0.25}", "data.image_size=28",
                             "data.num_train=512", "data.num_val=128", "batch_size=32",
                             "epochs=3", "print_every=1000", "seed=0"])
    result = train(cfg)
    assert type(result["model"].params) is cupy.ndarray
    assert result["top1"] > 0.9, result["top1"]     # the CPU reaches 1.0; chance is 0.1


def test_bsp_on_two_ranks_sharing_one_gpu_equals_one_process_with_twice_the_batch(
        cupy, tmp_path):
    settings = ["batch_size=8", "max_steps=6", "device=gpu"]
    workers, summaries = run_rule(tmp_path, 2, settings, timeout=90)
    np.testing.assert_array_equal(workers[0], workers[1])
    cfg, shards, models, optimizers = reference_setup(settings[:2], shards=2)
    batches = [shard.train.epoch(0) for shard in shards]
    for _ in range(6):
        pairs = [next(b) for b in batches]
        sgd_step(models[0], optimizers[0], (np.concatenate([x for x, _ in pairs]),
                                            np.concatenate([y for _, y in pairs])),
                 cfg["optimizer"]["lr"])
    np.testing.assert_allclose(workers[0], models[0].params, rtol=1e-4, atol=1e-5)


def test_nccl_all_reduce_on_one_rank(cupy):
    """What one GPU allows (NCCL refuses two ranks on one GPU), said plainly: this checks that
    the NCCL path runs (the id sent over MPI, the communicator, the all-reduce queued on the
    stream) and that the in-place sum over one rank leaves the buffer as it was, which a no-op
    would too. To see NCCL write something, the same communicator then reduces into a separate
    receive buffer filled with NaN, which must come back holding the values. That two ranks'
    buffers are summed needs two GPUs and is not tested here."""
    from cupy.cuda import nccl
    from mpi4py import MPI
    from sync.exchange import Exchange
    exchange = Exchange(MPI.COMM_SELF, "nccl")
    kinds = {np.float32: nccl.NCCL_FLOAT32, np.float64: nccl.NCCL_FLOAT64}
    for dtype in (np.float32, np.float64):
        values = cupy.arange(1000, dtype=dtype)
        exchange._nccl_sum(values)                # (mean() returns at once on one rank)
        np.testing.assert_array_equal(cupy.asnumpy(values), np.arange(1000, dtype=dtype))
        received = cupy.full(1000, np.nan, dtype)
        exchange._nccl.allReduce(values.data.ptr, received.data.ptr, 1000, kinds[dtype],
                                 nccl.NCCL_SUM, cupy.cuda.get_current_stream().ptr)
        np.testing.assert_array_equal(cupy.asnumpy(received), np.arange(1000, dtype=dtype))


FLOAT32_ON_GPU = {"rtol": 1e-4, "atol": 1e-5}     # cuBLAS sums in another order


def test_easgd_with_a_gpu_worker_follows_the_elastic_equations(cupy, tmp_path):
    from tests.sync.test_async_rules import easgd_with_one_worker
    easgd_with_one_worker(tmp_path, ["device=gpu"], FLOAT32_ON_GPU)


def test_downpour_with_a_gpu_worker_is_plain_sgd(cupy, tmp_path):
    from tests.sync.test_async_rules import downpour_with_one_worker
    downpour_with_one_worker(tmp_path, 2, ["device=gpu"], FLOAT32_ON_GPU)


def test_both_gossip_variants_converge_with_gpu_workers(cupy, tmp_path):
    from tests.sync.test_async_rules import elastic_gossip_converges, gosgd_converges
    gosgd_converges(tmp_path / "gosgd", ["device=gpu"])
    elastic_gossip_converges(tmp_path / "elastic", ["device=gpu"])
