"""Bulk-synchronous parallel SGD: every worker steps with the same averaged gradient.

``avg_freq: 1``: after each backward, ``g <- (1/n) sum_i g_i`` over the n workers (one exchange
of the flat gradient buffer), so n workers with batch b take exactly the steps of one process
with batch n*b over the union of their batches. ``avg_freq: k > 1``: workers take k local steps,
then average their parameters, ``x <- (1/n) sum_i x_i`` (model averaging).

With ``exchange.bucket_mb`` the gradient goes in buckets, and with ``exchange.overlap`` they
are averaged while backward runs (``sync/overlap.py``).

BatchNorm normalizes each worker's own batch (as PyTorch's DDP without SyncBatchNorm), so with
BatchNorm in the model the workers equal one process with N times the batch only with
``sync_bn: true``: every BatchNorm layer then averages its batch statistics, and in backward
its sums, over the workers (two small all-reduces per layer per step; ``layers/batch_norm.py``),
as Horovod's SyncBatchNorm and ChainerMN's MultiNodeBatchNormalization do. Without it the
running statistics stay per worker and validation uses their average.
"""
import contextlib
import platform

import numpy as np

from core.config import Key, register_section
from core.errors import ConfigError
from core.registry import RULES
from layers.batch_norm import BatchNorm2D
from sync.exchange import METHODS, RING_MIN_BYTES, SHARED_MIN_BYTES, Exchange
from sync.overlap import BucketedExchange
from sync.rule import SyncRule


def _avg_freq_is_bsp_only(cfg):
    rule, every = cfg["sync_rule"], cfg["avg_freq"]
    if every != 1 and rule != "BSP":
        period = RULES[rule].period
        instead = f"; {rule}'s exchanges are set by {period.format(k=every)}" if period else ""
        yield "avg_freq", (f"{every} has no effect under sync_rule {rule}: avg_freq is BSP's "
                           f"period of parameter averaging{instead}")


def _overlap_needs_gradient_averaging(cfg):
    if cfg["exchange"]["overlap"] and (cfg["sync_rule"] != "BSP" or cfg["avg_freq"] != 1):
        yield "exchange.overlap", (f"true needs sync_rule BSP with avg_freq 1 (it overlaps the "
                                   f"gradient exchange with backward), got {cfg['sync_rule']} "
                                   f"with avg_freq {cfg['avg_freq']}")


def _wire_needs_the_ring(cfg):
    ex = cfg["exchange"]
    if ex["wire"] is not None and ex["method"] not in ("auto", "ring"):
        yield "exchange.wire", (f"{ex['wire']} travels on the ring only (method auto or ring), "
                                f"got method {ex['method']!r}")


def _sync_bn_needs_gradient_averaging(cfg):
    if cfg["sync_bn"] and (cfg["sync_rule"] != "BSP" or cfg["avg_freq"] != 1):
        yield "sync_bn", (f"true needs sync_rule BSP with avg_freq 1 (the workers' batches "
                          f"are one batch), got {cfg['sync_rule']} with avg_freq "
                          f"{cfg['avg_freq']}")


def _scale_lr_needs_one_batch(cfg):
    if cfg["optimizer"]["scale_lr"] and (cfg["sync_rule"] != "BSP" or cfg["avg_freq"] != 1):
        yield "optimizer.scale_lr", (f"linear scales the rate with the total batch of BSP's "
                                     f"workers (avg_freq 1); under {cfg['sync_rule']} with "
                                     f"avg_freq {cfg['avg_freq']} each worker steps on its own "
                                     f"batch")


def _nccl_needs_the_gpu(cfg):
    if cfg["exchange"]["method"] == "nccl" and cfg["device"] != "gpu":
        yield "exchange.method", "nccl averages GPU buffers: it needs device: gpu"


register_section("avg_freq", Key("int", 1, low=1), checks=[_avg_freq_is_bsp_only])
register_section("sync_bn", Key("bool", False),       # BatchNorm over every worker's batch
                 checks=[_sync_bn_needs_gradient_averaging, _scale_lr_needs_one_batch])
register_section("exchange", {                    # how BSP averages its buffer
    "method": Key("str", "auto", choices=METHODS),
    "wire": Key("str", None, choices=("float16",), nullable=True),   # null: buffer dtype
    "ring_min_bytes": Key("int", RING_MIN_BYTES, low=0),   # auto: ring from this size up
    "shared_min_bytes": Key("int", SHARED_MIN_BYTES, low=0),   # auto, one host: shared
    "bucket_mb": Key("float", None, low=0, low_open=True, high=1e5, nullable=True),   # one
    "overlap": Key("bool", False),            # average buckets while backward runs
}, checks=[_overlap_needs_gradient_averaging, _wire_needs_the_ring, _nccl_needs_the_gpu])


@RULES.register("BSP")
class BSP(SyncRule):
    name = "BSP"
    period = "avg_freq"
    lockstep = True

    def __init__(self, world, cfg):
        super().__init__(world, cfg)
        self.avg_freq = cfg["avg_freq"]
        ex = cfg["exchange"]
        self.exchange = Exchange(self.workers, ex["method"], ex["wire"], ex["ring_min_bytes"],
                                 ex["shared_min_bytes"])
        self.bucket_bytes = int(ex["bucket_mb"] * 2 ** 20) if ex["bucket_mb"] else None
        self.overlap = ex["overlap"]
        self.buckets = None

    def describe(self):
        if self.num_workers == 1:
            return None
        what = "gradient" if self.avg_freq == 1 else f"parameters every {self.avg_freq} steps"
        return f"BSP averages the {what} by exchange {self.exchange.describe()}"

    def prepare(self, xp):
        """NCCL wants one GPU per rank: refused, naming the ranks, where two share one."""
        if (self.exchange.method != "nccl" or xp is np or self.workers is None
                or self.num_workers == 1):
            return                      # (NCCL on NumPy buffers is refused by allocate)
        mine = (platform.node(), xp.cuda.Device().pci_bus_id)
        shared = shared_gpus(self.workers.allgather(mine))
        if shared:
            raise ConfigError(f"exchange.method: nccl needs one GPU per rank, but {shared}; "
                              f"give each rank its own GPU (run/bind_gpu.sh) or use another "
                              f"method")

    def allocate(self, name, count, dtype, xp):
        """The buffer BSP averages (the gradient, or with ``avg_freq > 1`` the parameters)
        where its exchange averages fastest (for NumPy: shared memory when the workers share
        a host); the other one plainly."""
        if name == ("grads" if self.avg_freq == 1 else "params") and xp is np:
            return self.exchange.allocate(count, dtype)
        return super().allocate(name, count, dtype, xp)

    def start(self, model):
        super().start(model)
        if self.cfg["sync_bn"] and self.num_workers > 1:
            for layer in model.leaves():
                if isinstance(layer, BatchNorm2D):
                    layer.sync = WorkerMean(self)
        if self.avg_freq == 1 and (self.bucket_bytes or self.overlap):
            self.buckets = BucketedExchange(self.exchange, model.grads,
                                            self.bucket_bytes or model.grads.nbytes,
                                            self.overlap)
            self.backward_hook = self.buckets.ready

    def agree_loss(self, loss):
        """The mean loss over the workers: the same on all, NaN on all if any is NaN."""
        return float(self.worker_sum([loss])[0]) / self.num_workers

    def agree_finite(self, finite):
        """All workers skip (or stop) together: averaged gradients are the same everywhere,
        and with ``avg_freq > 1`` a skipped step must not skip an averaging on one rank only."""
        if self.avg_freq == 1:
            return finite
        return bool(self.worker_sum([0.0 if finite else 1.0])[0] == 0)

    def after_backward(self, model, step):
        if self.buckets is not None:
            self.buckets.finish()
        elif self.avg_freq == 1:
            self.exchange.mean(model.grads)

    def after_update(self, model, step):
        if self.avg_freq > 1 and step % self.avg_freq == 0:
            self.exchange.mean(model.params)

    @contextlib.contextmanager
    def evaluated(self, model):
        if self.avg_freq > 1:                  # parameters differ between averagings
            with super().evaluated(model):
                yield
            return
        saved = {k: v.copy() for k, v in model.state().items()}
        for value in model.state().values():
            self.average_over_workers(value)
        try:
            yield
        finally:
            model.load_state(saved)

    def finish(self, model):
        """End on the averaged model (so every worker holds the result)."""
        if self.avg_freq > 1:
            self.exchange.mean(model.params)
        for value in model.state().values():
            self.average_over_workers(value)


def shared_gpus(placements):
    """How the workers' (host, GPU bus id) ``placements`` share GPUs, in words ('' if none)."""
    ranks = {}
    for rank, placement in enumerate(placements):
        ranks.setdefault(placement, []).append(rank)
    return "; ".join(f"workers {', '.join(map(str, found))} share GPU {bus} on {host}"
                     for (host, bus), found in ranks.items() if len(found) > 1)


class WorkerMean:
    """Averages a small array over the workers in place (for synchronized BatchNorm); ``size``
    is their number."""

    def __init__(self, rule):
        self.rule, self.size = rule, rule.num_workers

    def __call__(self, values):
        self.rule.average_over_workers(values)
        return values


@RULES.register("LOCAL")
class Local(SyncRule):
    """No communication: each worker trains alone (the baseline); validation averages them."""
    name = "LOCAL"

