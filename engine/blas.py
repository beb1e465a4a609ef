"""How many cores the layers use: ``n`` worker threads, each calling BLAS single-threaded
(see layers/parallel.py for why)."""
import os

from layers import parallel


def set_threads(n=None):
    """Use ``n`` cores (None: all); returns the number set."""
    return parallel.set_workers(n or os.cpu_count() or 1)
