"""BLAS thread count (through threadpoolctl, which finds whichever BLAS numpy loaded)."""
import os

from threadpoolctl import threadpool_limits


def set_threads(n=None):
    """Limit BLAS to ``n`` threads (None: all cores); returns the number set."""
    n = n or os.cpu_count() or 1
    threadpool_limits(limits=n, user_api="blas")
    return n
