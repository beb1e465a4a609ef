"""The layers' own C kernels for the CPU: one ``<layer>.c`` file per layer beside this module,
built with the machine's C compiler (``cc``, or ``$CC``) into a shared library once per file,
float type and machine, and loaded with ctypes (the CPU's counterpart of ``layers/cuda``, which
CuPy builds at run time).

Each build is ``-O3 -march=native -shared -fPIC -Dreal=float|double``: the code is written with
GCC's vector extensions (64-byte vectors) and the compiler picks the machine's instructions.
The library lands in ``$PT_KERNEL_CACHE`` (default ``~/.cache/parallel_training/kernels``)
under a name hashed from the source, the flags, the compiler's version and the CPU's model and
flags, so that a home directory shared by different machines holds one build per kind of
machine; a build is written to a temporary name and renamed, so ranks building at once do not
see each other's half-written files.

``PT_C_KERNELS=0`` switches the kernels off (the layers take their NumPy routes). Where no
compiler is found or a build fails, ``library`` returns None and ``status`` says why in one
line, which the run's start line prints: the layers then take their NumPy routes, which compute
the same function (equal to rounding; tests/layers compare the two).
"""
import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

CTYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
FLAGS = ("-O3", "-march=native", "-shared", "-fPIC", "-std=gnu11")
ALIGN = 64      # bytes: the kernels' vectors; workspaces start on such a boundary

_failure = {}   # why a build was not made, by (name, dtype)


def source(name):
    """The path of ``<name>.c``."""
    return Path(__file__).with_name(f"{name}.c")


def compiler():
    """The C compiler's path, or None."""
    return shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")


def enabled():
    """Whether the kernels may be used (``PT_C_KERNELS`` is not 0)."""
    return os.environ.get("PT_C_KERNELS", "1").strip() not in ("0", "off", "no", "false")


def cache_dir():
    return Path(os.environ.get("PT_KERNEL_CACHE") or
                Path.home() / ".cache" / "parallel_training" / "kernels")


def _machine():
    """The CPU's model name and flags, as /proc/cpuinfo gives them (empty elsewhere)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.machine()
    keep = [line for line in lines if line.split(":")[0].strip() in ("model name", "flags")]
    return platform.machine() + "\n".join(sorted(set(keep)))


def _build(cc, name, ctype, out):
    """Compile ``<name>.c`` into ``out``; the compiler's error text, or None."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
    os.close(fd)
    try:
        done = subprocess.run([cc, *FLAGS, f"-Dreal={ctype}", str(source(name)), "-o", tmp],
                              capture_output=True, text=True)
        if done.returncode != 0:
            return done.stderr.strip().splitlines()[-1] if done.stderr.strip() else \
                f"{cc} exited with {done.returncode}"
        os.replace(tmp, out)
        return None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@functools.lru_cache(maxsize=None)
def library(name, dtype):
    """The ctypes library of ``<name>.c`` for float type ``dtype``, built if needed; None when
    the kernels are off or cannot be built (``status`` says why)."""
    dtype = np.dtype(dtype)
    key = (name, dtype)
    if not enabled():
        _failure[key] = "off (PT_C_KERNELS=0)"
        return None
    cc = compiler()
    if cc is None:
        _failure[key] = "off (no C compiler: cc or gcc; set CC)"
        return None
    version = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout
    ctype = CTYPES[dtype]
    digest = hashlib.sha256("\0".join([source(name).read_text(), " ".join(FLAGS), ctype,
                                       version, _machine()]).encode()).hexdigest()[:16]
    out = cache_dir() / f"{name}-{ctype}-{digest}.so"
    if not out.exists():
        try:
            error = _build(cc, name, ctype, out)
        except OSError as err:
            error = str(err)
        if error is not None:
            _failure[key] = f"off ({name}.c did not build: {error})"
            return None
    return ctypes.CDLL(str(out))


KERNELS = {"conv": "direct convolution", "batch_norm": "BatchNorm",    # file: what it does
           "max_pool": "MaxPool's backward"}


def status(dtype=np.float32):
    """One line for the start line: which C kernels are in use, or why none is."""
    built = [what for name, what in KERNELS.items() if library(name, dtype) is not None]
    missing = [_failure.get((name, np.dtype(dtype)), "off") for name in KERNELS
               if library(name, dtype) is None]
    if not missing:
        return f"C kernels ({', '.join(built)}), built by {Path(compiler()).name}"
    if not built:
        return "NumPy routes; C kernels " + missing[0]
    return f"C kernels ({', '.join(built)}); NumPy for the rest: " + "; ".join(missing)


def scratch(size, dtype):
    """A fresh buffer of ``size`` elements starting on an ``ALIGN``-byte boundary (a view into a
    slightly larger one), not kept past the call that uses it: layers that run one after the
    other then share one peak instead of each holding its own, and with freed memory kept
    (``core/memory.py``) the heap hands the same pages back without faulting them in again."""
    dtype = np.dtype(dtype)
    pad = ALIGN // dtype.itemsize
    buf = np.empty(size + pad, dtype)
    start = (-buf.ctypes.data % ALIGN) // dtype.itemsize
    return buf[start:start + size]


def integer(v):
    """An integer kernel argument (C ``long``)."""
    return ctypes.c_long(int(v))


def pointer(a):
    """``a``'s data address for a kernel argument (None stays NULL)."""
    return None if a is None else ctypes.c_void_p(a.ctypes.data)
