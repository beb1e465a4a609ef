"""Splitting a layer's work over a small pool of threads.

NumPy releases the GIL inside its loops, copies and BLAS calls, so threads that each take a
contiguous range of samples (or channels) run truly in parallel. With more than one worker,
BLAS is limited to one thread per call: the layers' own threads then do the parallel work,
copies included (a copy in NumPy is single-threaded, a GEMM with BLAS threads is not), and no
BLAS thread spins waiting while another worker copies.

    parallel.set_workers(2)
    parallel.split(n, fn)   # fn(start, stop, worker) over contiguous ranges covering [0, n)

Each worker index gets its own workspaces (``Layer.workspace(key + (worker,), ...)``).
"""
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from threadpoolctl import threadpool_limits

MIN_BYTES = 1 << 18   # least work per worker (bytes) for ``split_work`` to use threads

_pool = None
_workers = 1


def set_workers(n=None):
    """Use ``n`` worker threads (None: one per core; 1: run inline), each calling BLAS with
    one thread; returns the number set."""
    global _pool, _workers
    n = max(1, int(n or os.cpu_count() or 1))
    if n != _workers:
        if _pool is not None:
            _pool.shutdown()
        _pool = ThreadPoolExecutor(n, thread_name_prefix="layer") if n > 1 else None
        _workers = n
    threadpool_limits(limits=1, user_api="blas")
    return n


def workers():
    return _workers


def ranges(n, parts):
    """``parts`` contiguous (start, stop) ranges covering [0, n), sizes differing by <= 1."""
    parts = max(1, min(parts, n))
    base, extra = divmod(n, parts)
    bounds, start = [], 0
    for i in range(parts):
        stop = start + base + (i < extra)
        bounds.append((start, stop))
        start = stop
    return bounds


def split(n, fn):
    """Call ``fn(start, stop, worker)`` on contiguous ranges covering [0, n), one per worker,
    in parallel; returns the results in range order. Exceptions propagate."""
    parts = ranges(n, _workers)
    if len(parts) == 1 or _pool is None:
        return [fn(0, n, 0)]
    errors = np.geterr()   # NumPy's error state is per thread: workers take the caller's
    futures = [_pool.submit(_run_with_errstate, errors, fn, start, stop, w)
               for w, (start, stop) in enumerate(parts[1:], 1)]
    first = fn(parts[0][0], parts[0][1], 0)
    return [first] + [f.result() for f in futures]


def _run_with_errstate(errors, fn, start, stop, worker):
    with np.errstate(**errors):
        return fn(start, stop, worker)


def split_work(xp, n, fn, nbytes=None):
    """``split(n, fn)`` for NumPy work; one inline call ``fn(0, n, 0)`` with one worker, for
    CuPy arrays and, when ``nbytes`` (the work's size) is given, for less than ``MIN_BYTES``
    per worker."""
    if _workers == 1 or xp is not np or (nbytes is not None and nbytes < _workers * MIN_BYTES):
        return [fn(0, n, 0)]
    return split(n, fn)
