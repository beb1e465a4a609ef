"""Bulk-synchronous parallel SGD: every worker steps with the same averaged gradient.

``avg_freq: 1``: after each backward, ``g <- (1/n) sum_i g_i`` over the n workers (one exchange
of the flat gradient buffer), so n workers with batch b take exactly the steps of one process
with batch n*b over the union of their batches. ``avg_freq: k > 1``: workers take k local steps,
then average their parameters, ``x <- (1/n) sum_i x_i`` (model averaging).

With ``exchange.bucket_mb`` the gradient goes in buckets, and with ``exchange.overlap`` they
are averaged while backward runs (``sync/overlap.py``).

BatchNorm's running statistics stay per worker (each normalizes its own batch, as in PyTorch's
DDP without SyncBatchNorm); validation uses their average.
"""
import contextlib

from sync.exchange import Exchange
from sync.overlap import BucketedExchange
from sync.rule import SyncRule


class BSP(SyncRule):
    name = "BSP"

    def __init__(self, world, cfg):
        super().__init__(world, cfg)
        self.avg_freq = cfg["avg_freq"]
        ex = cfg["exchange"]
        self.exchange = Exchange(self.workers, ex["method"], ex["wire"], ex["ring_min_bytes"],
                                 ex["shared_min_bytes"])
        self.bucket_bytes = int(ex["bucket_mb"] * 2 ** 20) if ex["bucket_mb"] else None
        self.overlap = ex["overlap"]
        self.buckets = None

    def start(self, model):
        super().start(model)
        if self.avg_freq == 1:                 # the buffer exchanged goes where it is fastest
            model.move_buffers(grads=self.exchange.share(model.grads))
        else:
            model.move_buffers(params=self.exchange.share(model.params))
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


class Local(SyncRule):
    """No communication: each worker trains alone (the baseline); validation averages them."""
    name = "LOCAL"

