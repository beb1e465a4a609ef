import threading

import pytest
from threadpoolctl import threadpool_info

from layers import parallel


@pytest.fixture
def two_workers():
    parallel.set_workers(2)
    yield
    parallel.set_workers(1)


@pytest.mark.parametrize("n, parts", [(10, 2), (7, 3), (1, 4), (5, 5), (0, 2)])
def test_ranges_cover_every_item_once_in_order(n, parts):
    bounds = parallel.ranges(n, parts)
    assert [i for a, b in bounds for i in range(a, b)] == list(range(n))
    sizes = [b - a for a, b in bounds]
    assert max(sizes) - min(sizes) <= 1


def test_split_runs_on_two_threads_in_range_order(two_workers):
    seen = []
    barrier = threading.Barrier(2, timeout=10)   # both ranges must be running at once

    def work(start, stop, worker):
        barrier.wait()
        seen.append(threading.get_ident())
        return (start, stop, worker)
    assert parallel.split(9, work) == [(0, 5, 0), (5, 9, 1)]
    assert len(set(seen)) == 2


def test_blas_is_single_threaded_under_the_pool(two_workers):
    assert all(lib["num_threads"] == 1 for lib in threadpool_info()
               if lib["user_api"] == "blas")


def test_a_worker_exception_reaches_the_caller(two_workers):
    def work(start, stop, worker):
        if worker == 1:
            raise ValueError("bad range")
        return start
    with pytest.raises(ValueError, match="bad range"):
        parallel.split(4, work)


def test_one_worker_runs_inline():
    parallel.set_workers(1)
    assert parallel.split(3, lambda a, b, w: threading.get_ident()) == [threading.get_ident()]


def test_workers_follow_the_callers_numpy_error_state(two_workers):
    import numpy as np

    def work(start, stop, worker):
        return np.geterr()["over"]
    with np.errstate(over="ignore"):
        assert parallel.split(2, work) == ["ignore", "ignore"]
