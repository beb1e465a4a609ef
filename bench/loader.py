"""Loader benchmark: ``python bench/loader.py [--data DIR] [--batches N]``.

1. Throughput on one core: read 256x256 uint8 hickle batches, random 224x224 crop, mirror,
   mean subtraction to float32, in line (no prefetch thread, BLAS on one thread). Target:
   at least 1500 images/s.
2. Prefetch: a stand-in training step (float32 GEMMs on the main thread, one BLAS thread) that
   takes longer than loading one batch, over two epochs read as training reads them (one
   stream across the epoch boundary); with ``prefetch: 2`` the step should never wait for
   data. Prints the wait per step (mean and max) after the first ``prefetch + 2`` batches,
   whose ring buffers are being touched for the first time (slow on fresh memory here).

Without ``--data`` it prepares a synthetic ImageNet-shaped dataset in a temporary folder.
"""
import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.dataset import open_dataset         # noqa: E402
from data.loader import Loader                 # noqa: E402
from data.prepare import main as prepare       # noqa: E402


def throughput(dataset, batch, crop, epochs):
    loader = Loader(dataset.train, dataset.mean, batch, train=True, crop=(crop, crop),
                    mirror=True, prefetch=0)
    rates = []
    for epoch in range(epochs):
        tick, n = time.perf_counter(), 0
        for x, _ in loader.epoch(epoch):
            n += len(x)
        rates.append(n / (time.perf_counter() - tick))
    return rates


def prefetch_waits(dataset, batch, crop, step_seconds):
    """Per-step data waits with a step of about ``step_seconds`` of GEMM work."""
    a = np.random.default_rng(0).standard_normal((512, 512), dtype=np.float32)
    a @ a
    tick = time.perf_counter()
    for _ in range(10):
        a @ a
    gemms = max(1, int(step_seconds / ((time.perf_counter() - tick) / 10)))
    loader = Loader(dataset.train, dataset.mean, batch, train=True, crop=(crop, crop),
                    mirror=True, prefetch=2)
    waits, steps = [], []
    batches = loader.stream(0)                     # as training reads: across epochs
    for _ in range(2 * loader.steps_per_epoch):
        next(batches)
        waits.append(loader.wait_time)
        tick = time.perf_counter()
        for _ in range(gemms):
            a @ a
        steps.append(time.perf_counter() - tick)
    batches.close()
    per_step = np.diff([0.0] + waits)
    return per_step, np.array(steps)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, help="a prepared 256x256 dataset (default: make one)")
    parser.add_argument("--batches", type=int, default=16, help="training batch files to make")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--crop", type=int, default=224)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = args.data
        if path is None:
            path = Path(tmp) / "synthetic"
            prepare(["synthetic", str(path), "--train-batches", str(args.batches),
                     "--val-batches", "1", "--batch-size", str(args.batch_size)])
        dataset = open_dataset(path)
        print(f"{dataset}; cores: {os.cpu_count()}")
        with threadpool_limits(1):
            rates = throughput(dataset, args.batch_size, args.crop, args.epochs)
        print("1 core, in line: " + ", ".join(f"{r:.0f}" for r in rates) +
              f" img/s per epoch; best {max(rates):.0f} img/s "
              f"({1e3 * args.batch_size / max(rates):.1f} ms per batch of {args.batch_size})")
        load_seconds = args.batch_size / max(rates)
        with threadpool_limits(1):
            waits, steps = prefetch_waits(dataset, args.batch_size, args.crop,
                                          1.5 * load_seconds)
        warm = 4                 # prefetch + 2: the ring buffers are touched for the first time
        print(f"prefetch 2, step {1e3 * np.median(steps):.1f} ms (1.5x the load time): data wait "
              f"per step after the first {warm} (buffer warm-up, "
              f"{1e3 * waits[:warm].sum():.0f} ms in all): mean {1e3 * waits[warm:].mean():.2f} "
              f"ms, max {1e3 * waits[warm:].max():.2f} ms over {len(waits) - warm} steps, "
              f"epoch boundary included")


if __name__ == "__main__":
    main()
