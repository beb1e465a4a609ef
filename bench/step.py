"""Training-step benchmark: forward, backward and update time, images/s, achieved GFLOP/s, and in
the same run this machine's float32 GEMM GFLOP/s and the ratio of the two.

    python bench/step.py --model inception_small --batch 128
    python bench/step.py --model googlenet --batch 32 --profile

FLOPs: 2 per multiply-add of the convolutions and fully connected layers (measured by the layers
during the forward pass); a training step counts 3x the forward (forward, input gradient,
weight gradient), the usual convention. Element-wise layers are not counted.
"""
import argparse
import os
import resource
import sys
import time
from collections import defaultdict

import numpy as np
from threadpoolctl import threadpool_limits

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from engine.models import build_model  # noqa: E402
from engine.optimizers import SGD  # noqa: E402
from layers import parallel  # noqa: E402

INPUT = {"mlp": (3, 32), "inception_small": (3, 28), "googlenet": (3, 224)}


class Gemm:
    """The machine's float32 GEMM rate on ``threads`` cores: one (size x size) @ (size x size)
    product on ``threads`` BLAS threads, best of ``repeats``. Measured right after every step,
    so that each step is compared with the rate the machine gave at that moment (this VM's
    speed drifts by 30% from minute to minute)."""

    def __init__(self, dtype, threads, size=2048):
        self.a = np.random.default_rng(0).standard_normal((size, size)).astype(dtype)
        self.b, self.c = self.a.copy(), np.empty_like(self.a)
        self.threads, self.flops = threads, 2 * size ** 3

    def gflops(self, repeats=2):
        with threadpool_limits(limits=self.threads, user_api="blas"):
            best = min(_timed(lambda: np.matmul(self.a, self.b, out=self.c))
                       for _ in range(repeats))
        return self.flops / best / 1e9


def _timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def profile_layers(model, table):
    """Wrap every leaf layer's forward/backward to add its time to ``table[(kind, phase)]``."""
    for layer in model.leaves():
        for phase in ("forward", "backward"):
            inner = getattr(layer, phase)

            def timed(*args, _inner=inner, _key=(layer.name, phase), **kwargs):
                start = time.perf_counter()
                out = _inner(*args, **kwargs)
                table[_key] += time.perf_counter() - start
                return out
            setattr(layer, phase, timed)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="inception_small", choices=sorted(INPUT))
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5, help="timed steps (after 2 warm-up)")
    parser.add_argument("--threads", type=int, default=2,
                        help="cores: layer worker threads (and BLAS threads for the GEMM rate)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    parser.add_argument("--width", type=float, help="inception_small width multiplier")
    parser.add_argument("--profile", action="store_true", help="per-layer-type time table")
    args = parser.parse_args(argv)

    parallel.set_workers(args.threads)
    channels, size = INPUT[args.model]
    options = {"width": args.width} if args.width else {}
    model = build_model(args.model, options, dtype=args.dtype, seed=0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch, channels, size, size)).astype(args.dtype)
    labels = rng.integers(0, 10, size=args.batch)
    optimizer = SGD(lr=0.01, momentum=0.9, weight_decay=5e-4)
    table = defaultdict(float)

    gemm = Gemm(args.dtype, args.threads)
    gemm.gflops()
    times, gemm_rates = defaultdict(list), []
    for step in range(args.steps + 2):
        if step == 2 and args.profile:
            profile_layers(model, table)
        t0 = time.perf_counter()
        model.forward_loss(x, labels)
        t1 = time.perf_counter()
        model.backward()
        t2 = time.perf_counter()
        optimizer.step(model.params, model.grads)
        t3 = time.perf_counter()
        if step >= 2:
            times["forward"].append(t1 - t0)
            times["backward"].append(t2 - t1)
            times["update"].append(t3 - t2)
            gemm_rates.append(gemm.gflops())
    flops = 3 * model.forward_flops
    steps = np.sum([times[k] for k in ("forward", "backward", "update")], axis=0)
    ratio = float(np.median(flops / steps / 1e9 / np.array(gemm_rates)))
    med = {k: float(np.median(v)) for k, v in times.items()}
    step_time = float(np.median(steps))
    achieved = flops / step_time / 1e9
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6

    print(f"model {args.model} batch {args.batch} {args.dtype}, {args.threads} cores, "
          f"{model.num_params:,} parameters, {flops / args.batch / 1e9:.3f} GFLOP/image/step")
    print(f"forward {med['forward'] * 1e3:.1f} ms  backward {med['backward'] * 1e3:.1f} ms  "
          f"update {med['update'] * 1e3:.1f} ms  step {step_time * 1e3:.1f} ms (medians of "
          f"{args.steps})")
    print(f"step {achieved:.1f} GFLOP/s; GEMM {np.median(gemm_rates):.1f} GFLOP/s (median, "
          f"range {min(gemm_rates):.0f}-{max(gemm_rates):.0f}); peak RSS {peak_gb:.2f} GB")
    print(f"ratio {ratio:.3f}")
    print(f"{args.batch / step_time:.1f} img/s")
    if args.profile:
        total = sum(table.values())
        print(f"\n{'layer':<22}{'phase':<10}{'ms/step':>10}{'share':>8}")
        for (kind, phase), seconds in sorted(table.items(), key=lambda kv: -kv[1]):
            per_step = seconds / args.steps
            print(f"{kind:<22}{phase:<10}{per_step * 1e3:>10.1f}{seconds / total:>8.1%}")


if __name__ == "__main__":
    main()
