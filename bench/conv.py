"""Per-layer convolution benchmark on the CPU: GFLOP/s of one Conv2D's forward and backward
(dx included) on each route, against PyTorch's on the same shapes.

    python bench/conv.py                          # every shape, direct against im2col
    python bench/conv.py --shapes r20s3,r50l3 --routes auto
    python bench/conv.py --torch --peak           # and PyTorch's Conv2d, and the FMA peak
    python bench/conv.py --routes always:never,always:always   # direct products or Winograd

Routes are ``Conv2D.direct`` modes: ``always`` (the direct C kernels), ``never`` (im2col and
GEMMs), ``auto``, each optionally with a ``Conv2D.winograd`` mode after a colon
(``always:never``: the direct products only; without one, ``auto``). Every round runs each
route once, alternating, on ``--threads`` worker threads; a figure is the median over
``--rounds`` rounds. With ``--torch``, PyTorch's Conv2d (oneDNN, the same threads) runs the same
shape in a process of its own with glibc keeping freed memory (``step.py``'s TORCH_ENV), right
after ours; ours keeps freed memory too, as the engine does (``core/memory.py``;
``--malloc-defaults`` leaves glibc's defaults). ``--peak`` builds and runs fma_peak.c: one
core's float32 FMA rate, the ceiling of any kernel here.

FLOPs: 2 per multiply-add of the forward as the convolution defines it; the backward counts
twice that (dW and dx). A route by Winograd's F(2x2, 3x3) counts the same, though its products
take 2.25x fewer multiply-adds: its rates are the direct convolution's equivalent, and can pass
the FMA peak.
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.step import TORCH_ENV  # noqa: E402
from core.memory import keep_freed  # noqa: E402
from layers import c as ckernels  # noqa: E402
from layers import parallel  # noqa: E402
from layers.conv import Conv2D  # noqa: E402

# name: (batch, in channels, image side, out channels, kernel, stride, pad), the models' layers
SHAPES = {
    "r20s1": (128, 16, 32, 16, 3, 1, 1), "r20s2": (128, 32, 16, 32, 3, 1, 1),
    "r20s3": (128, 64, 8, 64, 3, 1, 1), "r50l1": (32, 64, 56, 64, 3, 1, 1),
    "r50l2": (32, 128, 28, 128, 3, 1, 1), "r50l3": (32, 256, 14, 256, 3, 1, 1),
    "r50l4": (32, 512, 7, 512, 3, 1, 1), "vgg1_2": (16, 64, 224, 64, 3, 1, 1),
    "vgg2_2": (16, 128, 112, 128, 3, 1, 1), "vgg3": (16, 256, 56, 256, 3, 1, 1),
    "vgg4": (16, 512, 28, 512, 3, 1, 1), "vgg5": (16, 512, 14, 512, 3, 1, 1),
    "alex3": (64, 256, 13, 384, 3, 1, 1), "gn4d": (32, 144, 14, 288, 3, 1, 1),
    "gn4e": (32, 160, 14, 320, 3, 1, 1), "gn5a": (32, 160, 7, 320, 3, 1, 1),
    "is3b": (128, 80, 14, 96, 3, 1, 1), "is3c": (128, 160, 7, 96, 3, 1, 1),
}


def flops(shape):
    n, c, h, o, k, s, p = shape
    side = (h + 2 * p - k) // s + 1
    return 2 * n * o * side * side * c * k * k


def ours(shape, routes, rounds):
    """{route: (forward seconds, backward seconds)}, medians over alternating rounds."""
    n, c, h, o, k, s, p = shape
    layer = Conv2D(c, o, k, stride=s, pad=p).build(np.float32, seed=0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, c, h, h)).astype(np.float32)
    dy = rng.standard_normal(layer.forward(x).shape).astype(np.float32)
    times = {route: ([], []) for route in routes}
    for _ in range(rounds + 1):                        # the first round warms up
        for route in routes:
            layer.direct, _, winograd = route.partition(":")
            layer.winograd = winograd or "auto"
            start = time.perf_counter()
            layer.forward(x)
            middle = time.perf_counter()
            layer.backward(dy)
            times[route][0].append(middle - start)
            times[route][1].append(time.perf_counter() - middle)
    return {route: tuple(statistics.median(t[1:]) for t in pair)
            for route, pair in times.items()}


def torch_worker(threads, rounds):
    """``--torch-worker``: for each shape name on stdin, PyTorch's forward and backward medians."""
    import torch
    torch.set_num_threads(threads)
    print("ready", flush=True)              # loaded: not competing with our first shape
    for line in sys.stdin:
        n, c, h, o, k, s, p = SHAPES[line.strip()]
        conv = torch.nn.Conv2d(c, o, k, s, p)
        x = torch.randn(n, c, h, h, requires_grad=True)
        dy = torch.randn_like(conv(x))
        forward, backward = [], []
        for _ in range(rounds + 1):
            start = time.perf_counter()
            y = conv(x)
            middle = time.perf_counter()
            y.backward(dy)
            forward.append(middle - start)
            backward.append(time.perf_counter() - middle)
        print(statistics.median(forward[1:]), statistics.median(backward[1:]), flush=True)


def peak():
    """One core's FMA GFLOP/s (fma_peak.c), or the reason there is none."""
    cc = ckernels.compiler()
    if cc is None:
        return "no C compiler"
    with tempfile.TemporaryDirectory() as tmp:
        exe = Path(tmp) / "fma_peak"
        subprocess.run([cc, "-O2", "-march=native", str(ROOT / "bench" / "fma_peak.c"), "-o",
                        str(exe)], check=True)
        out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
    return f"{float(out.split()[0]):.1f}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", default=",".join(SHAPES),
                        help=f"comma-separated, of: {', '.join(SHAPES)}")
    parser.add_argument("--routes", default="always,never",
                        help="Conv2D.direct modes, each with an optional :Conv2D.winograd mode")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--torch", action="store_true", help="PyTorch's Conv2d too")
    parser.add_argument("--peak", action="store_true", help="one core's FMA GFLOP/s first")
    parser.add_argument("--malloc-defaults", action="store_true",
                        help="leave glibc's defaults (freed memory goes back to the kernel)")
    parser.add_argument("--torch-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.torch_worker:
        return torch_worker(args.threads, args.rounds)
    names, routes = args.shapes.split(","), args.routes.split(",")
    unknown = [name for name in names if name not in SHAPES]
    if unknown:
        raise SystemExit(f"--shapes: unknown {', '.join(unknown)}; known: {', '.join(SHAPES)}")
    if args.peak:
        print(f"FMA peak, one core: {peak()} GFLOP/s")
    print(f"ours: {keep_freed(not args.malloc_defaults)}")
    parallel.set_workers(args.threads)
    twin = subprocess.Popen([sys.executable, __file__, "--torch-worker", "--threads",
                             str(args.threads), "--rounds", str(args.rounds)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, **TORCH_ENV)) if args.torch else None
    if twin and twin.stdout.readline().strip() != "ready":
        raise SystemExit("the PyTorch worker did not start (is torch installed? pip install "
                         "-e '.[bench]')")
    columns = routes + (["pytorch"] if twin else [])
    width = max(14, 6 + max(map(len, columns)))
    print(f"{'layer':<8}" + "".join(f"{name + ' fwd':>{width}}{name + ' bwd':>{width}}"
                                    for name in columns) + "   GFLOP/s, medians of", args.rounds)
    for name in names:
        shape = SHAPES[name]
        found = ours(shape, routes, args.rounds)
        if twin:
            twin.stdin.write(name + "\n")
            twin.stdin.flush()
            found["pytorch"] = tuple(map(float, twin.stdout.readline().split()))
        work = flops(shape)
        print(f"{name:<8}" + "".join(f"{work / found[r][0] / 1e9:>{width}.0f}"
                                     f"{2 * work / found[r][1] / 1e9:>{width}.0f}"
                                     for r in columns))
    if twin:
        twin.stdin.close()
        twin.wait(timeout=60)


if __name__ == "__main__":
    main()
