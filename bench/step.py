"""Training-step benchmark: forward, backward and update time, images/s, achieved GFLOP/s, and in
the same run this machine's float32 GEMM GFLOP/s and the ratio of the two.

    python bench/step.py --model inception_small --batch 128
    python bench/step.py --model googlenet --batch 32 --profile
    python bench/step.py --model resnet50 --batch 32 --torch
    python bench/step.py --device gpu --model googlenet --batch 128 [--tf32] --torch --profile

On the GPU the reference is cuBLAS's (8192 x 8192)^2 product (TF32 with --tf32), every timing
waits for the GPU to finish, memory is the CuPy pool's, and --torch trains PyTorch's twin
(cuDNN; bench/torch_models.py) in the same process, in rounds alternating with ours, and prints
the paired ratio and both peak GPU memories.

On the CPU, --torch trains the PyTorch twin (bench/torch_models.py: same network, batch, input
and threads) in a process of its own that keeps freed memory (glibc settings in TORCH_ENV), in
rounds alternating with ours, and prints both images/s, the paired ratio and both peak RSS.

FLOPs: 2 per multiply-add of the convolutions and fully connected layers (measured by the layers
during the forward pass); a training step counts 3x the forward (forward, input gradient,
weight gradient), less the first layer's input gradient, which training skips (nothing reads
it; ``Model.step_flops``). Element-wise layers are not counted. A convolution computed by
Winograd's F(2x2, 3x3) (``--winograd``, on by default where it measured faster) counts the same,
though it takes 2.25x fewer multiply-adds: the rates are the direct convolution's equivalent.
"""
import argparse
import os
import subprocess
import sys
import time
from collections import defaultdict

import numpy as np
from threadpoolctl import threadpool_limits

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from core.device import DeviceError, array_module  # noqa: E402
from core.memory import keep_freed, peak_rss  # noqa: E402
from core.models import build_model  # noqa: E402
from core.optimizers import SGD  # noqa: E402
from layers import parallel  # noqa: E402
from layers.conv import Conv2D  # noqa: E402
from layers.conv_direct import MODES  # noqa: E402

# (channels, image size) each model is usually trained at
INPUT = {"mlp": (3, 32), "inception_small": (3, 28), "googlenet": (3, 224), "alexnet": (3, 227),
         "vgg16": (3, 224), "resnet50": (3, 224), "resnet20": (3, 32), "resnet56": (3, 32),
         "cifar_resnet": (3, 32)}
LR = 1e-3       # small enough that no network diverges on random inputs (NaNs skew timings)


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


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="inception_small", choices=sorted(INPUT))
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=None,
                        help="square input side (default: the model's usual one)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps (after 2 warm-up)")
    parser.add_argument("--threads", type=int, default=2,
                        help="cores: layer worker threads (and BLAS threads for the GEMM rate)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    parser.add_argument("--width", type=float, help="width multiplier (models that have one)")
    parser.add_argument("--no-aux", action="store_true", help="googlenet without aux heads")
    parser.add_argument("--profile", action="store_true", help="per-layer-type time table")
    parser.add_argument("--malloc-defaults", action="store_true",
                        help="cpu: leave glibc's defaults (freed memory goes back to the kernel)"
                             " instead of keep_freed_memory's settings")
    parser.add_argument("--winograd", default="auto", choices=MODES,
                        help="cpu: Conv2D.winograd for every convolution (the direct route's "
                             "3x3 layers by Winograd's F(2x2, 3x3))")
    parser.add_argument("--device", default="cpu", choices=("cpu", "gpu"))
    parser.add_argument("--tf32", action="store_true", help="gpu: TF32 matrix products")
    parser.add_argument("--torch", action="store_true",
                        help="also time PyTorch training the same network (on the CPU: in a "
                             "process of its own, rounds alternating with ours)")
    parser.add_argument("--rounds", type=int, default=4,
                        help="--torch: alternating rounds of --steps steps each")
    return parser.parse_args(argv)


def options_of(args):
    """The model options the flags ask for (the twin takes the same)."""
    options = {"width": args.width} if args.width else {}
    if args.no_aux:
        options["aux_heads"] = False
    if args.model in ("googlenet", "alexnet", "vgg16", "mlp"):
        options["image_size"] = args.image_size
    return options


def time_steps(model, x, labels, optimizer, steps, sync, times=None, gemm=None):
    """Run ``steps`` training steps (the first layer skipping its input gradient, as training
    does); per-phase seconds into ``times``, and the GEMM rate after each step into
    ``gemm[1]`` (``gemm[0]`` measures it), when given; returns each step's seconds."""
    seconds = []
    for _ in range(steps):
        sync()
        t0 = time.perf_counter()
        model.forward_loss(x, labels)
        sync()
        t1 = time.perf_counter()
        model.backward(input_grad=False)
        sync()
        t2 = time.perf_counter()
        optimizer.step(model.params, model.grads, lr=LR)
        sync()
        t3 = time.perf_counter()
        seconds.append(t3 - t0)
        if times is not None:
            for phase, t in (("forward", t1 - t0), ("backward", t2 - t1), ("update", t3 - t2)):
                times[phase].append(t)
        if gemm is not None:
            gemm[1].append(gemm[0].gflops())
    return seconds


def main(argv=None):
    args = parse(argv)
    if args.profile and args.torch:
        raise SystemExit("--profile waits for every layer, slowing the steps --torch times: "
                         "give one of them, not both")
    parallel.set_workers(args.threads)
    Conv2D.winograd = args.winograd
    heap = keep_freed(args.device == "cpu" and not args.malloc_defaults)
    try:
        xp = array_module(args.device, 0, args.tf32)
    except DeviceError as err:
        raise SystemExit(str(err)) from None
    gpu = xp is not np
    sync = xp.cuda.get_current_stream().synchronize if gpu else (lambda: None)
    channels, size = INPUT[args.model]
    args.image_size = args.image_size or size
    model = build_model(args.model, options_of(args), dtype=args.dtype, seed=0, xp=xp)
    rng = np.random.default_rng(0)
    x = xp.asarray(rng.standard_normal((args.batch, channels, args.image_size,
                                        args.image_size)).astype(args.dtype))
    labels = xp.asarray(rng.integers(0, 10, size=args.batch))
    optimizer = SGD(momentum=0.9, weight_decay=5e-4)
    table = defaultdict(float)
    classes = model.forward(x[:1], train=False).shape[1]     # for the PyTorch twin
    gemm = DeviceGemm(xp) if gpu else Gemm(args.dtype, args.threads)
    gemm.gflops()
    time_steps(model, x, labels, optimizer, 2, sync)         # warm-up
    if args.profile:
        profile_layers(model, table, sync)
    times, gemm_rates = defaultdict(list), []
    steps = np.array(time_steps(model, x, labels, optimizer, args.steps, sync, times,
                                (gemm, gemm_rates)))
    report(args, model, times, steps, gemm_rates, gpu, xp, heap)
    if args.torch and gpu:
        race_on_gpu(args, model, x, labels, optimizer, classes, sync, xp)
    elif args.torch:
        race(args, model, x, labels, optimizer, classes)
    if args.profile:
        total = sum(table.values())
        print(f"\n{'layer':<22}{'phase':<10}{'ms/step':>10}{'share':>8}")
        for (kind, phase), seconds in sorted(table.items(), key=lambda kv: -kv[1]):
            per_step = seconds / args.steps
            print(f"{kind:<22}{phase:<10}{per_step * 1e3:>10.1f}{seconds / total:>8.1%}")


def report(args, model, times, steps, gemm_rates, gpu, xp, heap):
    """The step's phases, its GFLOP/s against the GEMM's, images/s and memory."""
    flops = model.step_flops
    ratio = float(np.median(flops / steps / 1e9 / np.array(gemm_rates)))
    med = {k: float(np.median(v)) for k, v in times.items()}
    step_time = float(np.median(steps))
    if gpu:
        held = xp.get_default_memory_pool().total_bytes()
        memory = f"GPU memory held by the pool {held / 1e9:.2f} GB"
        name = xp.cuda.runtime.getDeviceProperties(xp.cuda.Device().id)["name"]
        where = (name.decode() if isinstance(name, bytes) else name) + \
            (", TF32" if args.tf32 else "")
    else:
        memory = f"peak RSS {peak_rss() / 1e9:.2f} GB"
        where = f"{args.threads} cores, {heap}"
    print(f"model {args.model} {args.image_size}x{args.image_size} batch {args.batch} "
          f"{args.dtype}, {where}, {model.num_params:,} parameters, "
          f"{flops / args.batch / 1e9:.3f} GFLOP/image/step")
    print(f"forward {med['forward'] * 1e3:.1f} ms  backward {med['backward'] * 1e3:.1f} ms  "
          f"update {med['update'] * 1e3:.1f} ms  step {step_time * 1e3:.1f} ms (medians of "
          f"{args.steps})")
    print(f"step {flops / step_time / 1e9:.1f} GFLOP/s; GEMM {np.median(gemm_rates):.1f} "
          f"GFLOP/s (median, range {min(gemm_rates):.0f}-{max(gemm_rates):.0f}); {memory}")
    print(f"ratio {ratio:.3f}")
    print(f"{args.batch / step_time:.1f} img/s")


# PyTorch on the CPU keeps freed memory with these (measured: 1.4x faster than its default)
TORCH_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "68719476736"}


def race(args, model, x, labels, optimizer, classes):
    """Ours against the PyTorch twin on the CPU, same batch, input and threads: the twin in a
    process of its own (``torch_models.py --serve``), rounds of ``--steps`` steps alternating
    with ours; prints the medians, the paired ratio and both peak memories."""
    command = [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                            "torch_models.py"), "--serve", args.model,
               str(args.batch), str(args.image_size), str(classes), str(args.threads),
               repr(options_of(args))]
    twin = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, **TORCH_ENV))
    first = twin.stdout.readline().split()
    if first[:1] != ["ready"] or int(first[1]) != model.num_params:
        raise SystemExit(f"the PyTorch {args.model} says {first}; ours has "
                         f"{model.num_params:,} parameters: not the same network")
    ours, theirs = [], []
    for _ in range(args.rounds):
        ours.append(float(np.median(time_steps(model, x, labels, optimizer, args.steps,
                                               lambda: None))))
        twin.stdin.write(f"{args.steps}\n")
        twin.stdin.flush()
        theirs.append(float(twin.stdout.readline()))
    twin.stdin.write("0\n")
    twin.stdin.flush()
    torch_rss = float(twin.stdout.readline())
    twin.wait(timeout=60)
    ours, theirs = np.array(ours), np.array(theirs)
    rss = peak_rss() / 1e9
    paired = theirs / ours
    print(f"pytorch {args.batch / np.median(theirs):.1f} img/s (step "
          f"{np.median(theirs) * 1e3:.0f} ms), ours {args.batch / np.median(ours):.1f} img/s "
          f"(step {np.median(ours) * 1e3:.0f} ms); paired ours/pytorch {np.median(paired):.3f} "
          f"over {args.rounds} rounds ({paired.min():.3f}-{paired.max():.3f}); peak RSS ours "
          f"{rss:.2f} GB, pytorch {torch_rss:.2f} GB")


def race_on_gpu(args, model, x, labels, optimizer, classes, sync, xp):
    """Ours against the PyTorch twin on the GPU, in this process: rounds of ``--steps`` steps
    alternating, each step waited for; prints the medians, the paired ratio and both peak
    memories (ours: what CuPy's pool holds; PyTorch: what its allocator reserved at most)."""
    import torch_models
    twin = torch_models.Twin(args.model, args.batch, args.image_size, classes,
                             options_of(args), "cuda", args.tf32, LR)
    if twin.params != model.num_params:
        raise SystemExit(f"the PyTorch {args.model} has {twin.params:,} parameters, ours "
                         f"{model.num_params:,}: not the same network")
    for _ in range(3):                        # cuDNN's benchmark mode picks its algorithms
        twin.step()
    ours, theirs = [], []
    for _ in range(args.rounds):
        ours.append(float(np.median(time_steps(model, x, labels, optimizer, args.steps, sync))))
        theirs.append(twin.median_step(args.steps))
    ours, theirs = np.array(ours), np.array(theirs)
    paired = theirs / ours
    held = xp.get_default_memory_pool().total_bytes() / 1e9
    print(f"pytorch {args.batch / np.median(theirs):.1f} img/s (step "
          f"{np.median(theirs) * 1e3:.1f} ms), ours {args.batch / np.median(ours):.1f} img/s "
          f"(step {np.median(ours) * 1e3:.1f} ms); paired ours/pytorch {np.median(paired):.3f} "
          f"over {args.rounds} rounds ({paired.min():.3f}-{paired.max():.3f}); GPU memory ours "
          f"{held:.2f} GB, pytorch {twin.peak_memory():.2f} GB")


if __name__ == "__main__":
    main()
