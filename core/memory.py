"""The process's heap on the CPU: freed memory kept for reuse (``keep_freed_memory: true``).

A training step allocates and frees the same large activation and gradient buffers every step.
By default glibc serves every block over its mmap threshold (128 KiB, adapting up to 32 MiB) by
mmap and gives it back to the kernel when freed, so the next step faults the same pages in
again and the kernel zeroes them. With

    mallopt(M_MMAP_MAX, 0)           large blocks come from the heap, not from mmap
    mallopt(M_TRIM_THRESHOLD, -1)    the heap's free top is never handed back

the next step reuses the freed blocks; PyTorch's CPU twin runs with the same settings
(``bench/step.py``'s TORCH_ENV). The price: the process's resident memory stays at its peak.
Set by the engine at the start of a CPU run, before the model's buffers exist; the figures are
in bench/README.md.

Where glibc is not the C library, or the user has set MALLOC_MMAP_MAX_ or
MALLOC_TRIM_THRESHOLD_ in the environment (glibc has then read theirs), nothing is changed and
the returned line says so.
"""
import ctypes
import os
import platform

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4          # glibc's malloc.h
ENVIRONMENT = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_")
KEPT = "freed memory kept for reuse (glibc: mmap off, no trim)"


def keep_freed(keep=True):
    """Keep freed memory for reuse when ``keep`` (see above); returns a line for the start
    line and the run's metadata saying what applies."""
    if not keep:
        return "the C library's defaults (as asked: keep_freed_memory false)"
    given = [name for name in ENVIRONMENT if name in os.environ]
    if given:
        return f"glibc's settings from the environment ({', '.join(given)})"
    if platform.libc_ver()[0] != "glibc":
        return "the C library's defaults (not glibc)"
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    if not (mallopt(M_MMAP_MAX, 0) and mallopt(M_TRIM_THRESHOLD, -1)):
        return "the C library's defaults (glibc refused mallopt)"
    return KEPT


def peak_rss():
    """This process's peak resident memory in bytes: VmHWM from /proc/self/status, which counts
    this program's memory only (getrusage's ru_maxrss of a spawned process starts at its
    parent's peak: PyTorch's twin started by a large benchmark would report the benchmark's),
    else ru_maxrss (kilobytes on Linux)."""
    try:
        with open("/proc/self/status") as status:
            peaks = [line for line in status if line.startswith("VmHWM:")]
    except OSError:                    # no /proc: not Linux
        peaks = []
    if peaks:
        return int(peaks[0].split()[1]) * 1024
    import resource                    # POSIX only
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
