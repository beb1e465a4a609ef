"""Weak scaling of BSP: ``python bench/scaling.py [--model inception_small] [--batch 64]``.

Runs the same timed BSP training steps (forward, backward, gradient exchange, SGD update) with
1 worker and then 2 workers under mpiexec, each worker with 1 thread and its own batch of
``--batch`` random images, and prints the images/s of each and the ratio (target >= 1.8 for
inception_small on the 2-core machine). With ``--overlap`` the second run also reports how much
of the exchange backward hid. Internally it re-runs itself under mpiexec with ``--worker``.
"""
import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def worker(args):
    import numpy as np

    import sync  # noqa: F401  (every rule's settings)
    from core.config import load_config
    from core.models import build_model
    from core.optimizers import build_optimizer
    from layers import parallel
    from sync.bsp import BSP
    from sync.comm import world

    w = world()
    parallel.set_workers(1)
    cfg = load_config(None, [f"exchange.method={args.method}",
                             f"exchange.overlap={str(args.overlap).lower()}",
                             f"exchange.bucket_mb={args.bucket_mb}" if args.overlap else
                             "exchange.bucket_mb=null"])
    options = {"in_channels": 3, "num_classes": 10}
    if args.model == "googlenet":
        options.update(image_size=args.size, aux_heads=False)
    rule, optimizer = BSP(w, cfg), build_optimizer(cfg["optimizer"])
    model = build_model(args.model, options, "float32", 0, allocate=rule.allocate)
    rule.start(model)
    rng = np.random.default_rng(w.rank)
    x = rng.standard_normal((args.batch, 3, args.size, args.size), dtype=np.float32)
    y = rng.integers(0, 10, size=args.batch)
    times = []
    for step in range(args.warmup + args.steps):
        w.barrier()
        tick = time.perf_counter()
        rule.agree_loss(float(model.forward_loss(x, y)[0]))
        model.backward(rule.backward_hook)
        rule.after_backward(model, step + 1)
        optimizer.step(model.params, model.grads, lr=0.01)
        times.append(time.perf_counter() - tick)
    step_time = float(np.median(times[args.warmup:]))
    if w.rank == 0:
        line = f"{w.size} worker(s): {w.size * args.batch / step_time:.1f} img/s " \
               f"(step {step_time * 1e3:.0f} ms)"
        if rule.buckets is not None and rule.buckets.exchange_time > 0:
            line += f", exchange {rule.buckets.exchange_time * 1e3 / len(times):.1f} ms/step, " \
                    f"{100 * rule.buckets.hidden / rule.buckets.exchange_time:.0f}% hidden by " \
                    f"backward"
        print(line, flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="inception_small",
                        choices=("inception_small", "googlenet"))
    parser.add_argument("--batch", type=int, default=64, help="images per worker per step")
    parser.add_argument("--size", type=int, default=28, help="image height and width")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--method", default="auto", help="exchange.method (default auto)")
    parser.add_argument("--overlap", action="store_true")
    parser.add_argument("--bucket-mb", type=float, default=1.0)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    rates = []
    for n in (1, 2):
        command = ["mpiexec", "--oversubscribe", "-n", str(n), sys.executable, __file__,
                   "--worker"] + sys.argv[1:]
        out = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1200)
        if out.returncode:
            sys.exit(out.stdout + out.stderr)
        print(out.stdout.strip(), flush=True)
        rates.append(float(out.stdout.split(": ")[1].split()[0]))
    print(f"weak scaling 2 vs 1 worker: {rates[1] / rates[0]:.2f}x")


if __name__ == "__main__":
    main()
