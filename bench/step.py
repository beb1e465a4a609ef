"""Training-step benchmark: forward, backward and update time, images/s, achieved GFLOP/s, and in
the same run this machine's float32 GEMM GFLOP/s and the ratio of the two.

    python bench/step.py --model inception_small --batch 128
    python bench/step.py --model googlenet --batch 32 --profile
    python bench/step.py --device gpu --model googlenet --batch 128 [--tf32] --torch --profile

On the GPU the reference is cuBLAS's (8192 x 8192)^2 product (TF32 with --tf32), every timing
waits for the GPU to finish, memory is the CuPy pool's, and --torch times PyTorch (cuDNN)
training the same network (bench/torch_models.py) in the same run, for the ratio of the two.

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

from core.device import DeviceError, array_module  # noqa: E402
from core.models import build_model  # noqa: E402
from core.optimizers import SGD  # noqa: E402
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


class DeviceGemm:
    """The GPU's float32 (or TF32, as set) GEMM rate: one (size x size) @ (size x size) product
    through cuBLAS, best of ``repeats``."""

    def __init__(self, cupy, size=8192):
        self.cupy, self.flops = cupy, 2 * size ** 3
        self.a = cupy.random.default_rng(0).standard_normal((size, size), dtype=np.float32)
        self.c = cupy.empty_like(self.a)

    def gflops(self, repeats=3):
        sync = self.cupy.cuda.get_current_stream().synchronize
        best = min(_timed(lambda: self.cupy.matmul(self.a, self.a, out=self.c), sync)
                   for _ in range(repeats + 1))       # the first also loads cuBLAS
        return self.flops / best / 1e9


def _timed(fn, sync=lambda: None):
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def profile_layers(model, table, sync=lambda: None):
    """Wrap every leaf layer's forward/backward to add its time to ``table[(kind, phase)]``
    (``sync`` waits for a GPU before each reading)."""
    for layer in model.leaves():
        for phase in ("forward", "backward"):
            inner = getattr(layer, phase)

            def timed(*args, _inner=inner, _key=(layer.name, phase), **kwargs):
                sync()
                start = time.perf_counter()
                out = _inner(*args, **kwargs)
                sync()
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
    parser.add_argument("--device", default="cpu", choices=("cpu", "gpu"))
    parser.add_argument("--tf32", action="store_true", help="gpu: TF32 matrix products")
    parser.add_argument("--torch", action="store_true",
                        help="gpu: also time PyTorch training the same network")
    args = parser.parse_args(argv)

    parallel.set_workers(args.threads)
    try:
        xp = array_module(args.device, 0, args.tf32)
    except DeviceError as err:
        raise SystemExit(str(err)) from None
    gpu = xp is not np
    sync = xp.cuda.get_current_stream().synchronize if gpu else (lambda: None)
    channels, size = INPUT[args.model]
    options = {"width": args.width} if args.width else {}
    model = build_model(args.model, options, dtype=args.dtype, seed=0, xp=xp)
    rng = np.random.default_rng(0)
    x = xp.asarray(rng.standard_normal((args.batch, channels, size, size)).astype(args.dtype))
    labels = xp.asarray(rng.integers(0, 10, size=args.batch))
    optimizer = SGD(momentum=0.9, weight_decay=5e-4)
    table = defaultdict(float)
    classes = model.forward(x[:1], train=False).shape[1]     # for the PyTorch twin

    gemm = DeviceGemm(xp) if gpu else Gemm(args.dtype, args.threads)
    gemm.gflops()
    times, gemm_rates = defaultdict(list), []
    for step in range(args.steps + 2):
        if step == 2 and args.profile:
            profile_layers(model, table, sync)
        sync()
        t0 = time.perf_counter()
        model.forward_loss(x, labels)
        sync()
        t1 = time.perf_counter()
        model.backward()
        sync()
        t2 = time.perf_counter()
        optimizer.step(model.params, model.grads, lr=0.01)
        sync()
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
    if gpu:
        held = xp.get_default_memory_pool().total_bytes()
        memory = f"GPU memory held by the pool {held / 1e9:.2f} GB"
        name = xp.cuda.runtime.getDeviceProperties(xp.cuda.Device().id)["name"]
        where = (name.decode() if isinstance(name, bytes) else name) + \
            (", TF32" if args.tf32 else "")
    else:
        memory = f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.2f} GB"
        where = f"{args.threads} cores"

    print(f"model {args.model} batch {args.batch} {args.dtype}, {where}, "
          f"{model.num_params:,} parameters, {flops / args.batch / 1e9:.3f} GFLOP/image/step")
    print(f"forward {med['forward'] * 1e3:.1f} ms  backward {med['backward'] * 1e3:.1f} ms  "
          f"update {med['update'] * 1e3:.1f} ms  step {step_time * 1e3:.1f} ms (medians of "
          f"{args.steps})")
    print(f"step {achieved:.1f} GFLOP/s; GEMM {np.median(gemm_rates):.1f} GFLOP/s (median, "
          f"range {min(gemm_rates):.0f}-{max(gemm_rates):.0f}); {memory}")
    print(f"ratio {ratio:.3f}")
    print(f"{args.batch / step_time:.1f} img/s")
    if args.torch:
        print_torch_comparison(args, model, classes, args.batch / step_time)
    if args.profile:
        total = sum(table.values())
        print(f"\n{'layer':<22}{'phase':<10}{'ms/step':>10}{'share':>8}")
        for (kind, phase), seconds in sorted(table.items(), key=lambda kv: -kv[1]):
            per_step = seconds / args.steps
            print(f"{kind:<22}{phase:<10}{per_step * 1e3:>10.1f}{seconds / total:>8.1%}")


def print_torch_comparison(args, model, classes, ours):
    """PyTorch's training throughput on the same network, batch and precision, and ours over
    it; refuses to compare networks of different sizes."""
    import torch_models
    theirs, params = torch_models.images_per_second(args.model, args.batch, INPUT[args.model][1],
                                                    classes, max(args.steps, 10), args.tf32)
    if params != model.num_params:
        raise SystemExit(f"the PyTorch {args.model} has {params:,} parameters, ours "
                         f"{model.num_params:,}: not the same network")
    print(f"pytorch {theirs:.1f} img/s; ours/pytorch {ours / theirs:.3f}")


if __name__ == "__main__":
    main()
