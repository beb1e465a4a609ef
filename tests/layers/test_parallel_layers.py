"""The threaded CPU paths (layers.parallel) give the same forward and backward results as one
worker: BatchNorm2D (channel ranges), ReLU, MaxPool2D, AvgPool2D, LRN and Concat (sample or
plane ranges), Linear (samples, or W's features), including batches smaller than the number of
workers and odd sizes."""
import numpy as np
import pytest

from layers import batch_norm_c, layout, parallel
from layers.avg_pool import AvgPool2D
from layers.batch_norm import BatchNorm2D
from layers.concat import Concat
from layers.linear import Linear
from layers.lrn import LRN
from layers.max_pool import MaxPool2D
from layers.relu import ReLU


@pytest.fixture
def calls(monkeypatch):
    """Split even tiny arrays (no minimum work per worker) and count the threaded splits; the
    worker count is back at 1 afterwards."""
    monkeypatch.setattr(parallel, "MIN_BYTES", 0)
    record = []
    inner = parallel.split

    def split(n, fn):
        record.append(n)
        return inner(n, fn)
    monkeypatch.setattr(parallel, "split", split)
    yield record
    parallel.set_workers(1)


def run(make, x, dy, workers, train=True):
    """Forward, backward and gradients of a fresh layer with ``workers`` threads."""
    parallel.set_workers(workers)
    layer = make().build(x.dtype, seed=3)
    out = [layer.forward(x.copy(), train)]
    if train:
        out.append(layer.backward(dy.copy()))
        out.extend(g.copy() for g in layer.grads.values())
    for _ in range(2):                          # again, on the workspaces of the first call
        y = layer.forward(x.copy(), train)
    np.testing.assert_array_equal(y, out[0])
    return out


def check_same(make, shape, calls, workers, dtype=np.float32, train=True, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(dtype)
    parallel.set_workers(1)
    y = make().build(dtype).forward(x.copy())
    dy = rng.standard_normal(y.shape).astype(dtype)
    one = run(make, x, dy, 1, train)
    assert calls == []
    many = run(make, x, dy, workers, train)
    assert calls, "the threaded path was not taken"
    for a, b in zip(one, many):
        np.testing.assert_array_equal(a, b)


# Batches below, at and above the number of workers, odd channel counts and plane sizes.
SHAPES = [(1, 3, 5, 7), (2, 5, 9, 9), (3, 7, 11, 6), (5, 4, 8, 8)]


@pytest.mark.parametrize("workers", [2, 3])
@pytest.mark.parametrize("shape", SHAPES)
def test_relu(shape, workers, calls):
    check_same(ReLU, shape, calls, workers)
    calls.clear()
    check_same(lambda: ReLU(inplace=True), shape, calls, workers, dtype=np.float64)


@pytest.mark.parametrize("workers", [2, 3])
@pytest.mark.parametrize("shape", SHAPES + [(4, 3, 1, 1)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batch_norm(shape, workers, dtype, calls):
    check_same(lambda: BatchNorm2D(shape[1]), shape, calls, workers, dtype)


@pytest.mark.parametrize("workers", [2, 3])
@pytest.mark.parametrize("shape, fout, by_features", [
    ((3, 40), 31, True),         # W (31 x 40) larger than x: forward and dx by W's features
    ((50, 6), 5, False),         # x larger than W: by samples
])
def test_linear(shape, fout, by_features, workers, calls):
    """Equal to rounding (BLAS blocks a product's edges differently by its size, so a split's
    last bits may differ: one worker's own result is not bit for bit a fixed point here)."""
    assert Linear(shape[1], fout).build(np.float64)._by_features(np.empty(shape)) == by_features
    rng = np.random.default_rng(4)
    x, dy = rng.standard_normal(shape), rng.standard_normal((shape[0], fout))
    one = run(lambda: Linear(shape[1], fout), x, dy, 1)
    many = run(lambda: Linear(shape[1], fout), x, dy, workers)
    assert calls, "the threaded path was not taken"
    for a, b in zip(one, many):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-15)


def test_batch_norm_small_block_and_2d_input(calls, monkeypatch):
    monkeypatch.setattr(BatchNorm2D, "block_elems", 16)      # several blocks per worker
    check_same(lambda: BatchNorm2D(7), (3, 7, 5, 5), calls, 2)
    calls.clear()
    check_same(lambda: BatchNorm2D(9), (6, 9), calls, 2)


def test_batch_norm_recentred_channels(calls):
    """Channels with a large mean take the centred second pass in one worker's range only."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((3, 6, 4, 4))
    x[:, 4] += 1e4
    dy = rng.standard_normal(x.shape)
    one = run(lambda: BatchNorm2D(6), x, dy, 1)
    many = run(lambda: BatchNorm2D(6), x, dy, 2)
    assert calls
    for a, b in zip(one, many):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_batch_norm_evaluation(calls):
    check_same(lambda: BatchNorm2D(5), (3, 5, 6, 6), calls, 2, train=False)


@pytest.mark.parametrize("workers", [2, 3])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("geometry", [(3, 2, 0, True), (3, 1, 1, True), (3, 2, 1, False),
                                      (2, 2, 1, True)])
def test_max_pool(shape, geometry, workers, calls, monkeypatch):
    monkeypatch.setattr(MaxPool2D, "chunk_elems", 64)          # several chunks per worker
    k, s, p, ceil_mode = geometry
    check_same(lambda: MaxPool2D(k, s, p, ceil_mode), shape, calls, workers)


AVG_CASES = [(shape, geometry) for shape in SHAPES
             for geometry in [(3, 2, 0), (3, 1, 1), (5, 3, 0)]
             if min(shape[2:]) + 2 * geometry[2] >= geometry[0]]   # the window fits


@pytest.mark.parametrize("workers", [2, 3])
@pytest.mark.parametrize("shape, geometry", AVG_CASES)
def test_avg_pool(shape, geometry, workers, calls):
    check_same(lambda: AvgPool2D(*geometry), shape, calls, workers)


@pytest.mark.parametrize("workers", [2, 3])
@pytest.mark.parametrize("shape", SHAPES)
def test_lrn(shape, workers, calls, monkeypatch):
    monkeypatch.setattr(LRN, "chunk_elems", 40)                # several chunks per worker
    check_same(lambda: LRN(size=5, alpha=0.5), shape, calls, workers)
    calls.clear()
    check_same(lambda: LRN(size=4, alpha=0.3, beta=0.6), shape, calls, workers, np.float64)


@pytest.mark.parametrize("workers", [2, 3])
def test_concat(workers, calls):
    from layers.conv import Conv2D
    make = lambda: Concat(Conv2D(3, 2, 1), ReLU(), MaxPool2D(3, 1, 1))  # noqa: E731
    check_same(make, (5, 3, 6, 6), calls, workers, dtype=np.float64)


def test_small_arrays_run_inline(monkeypatch):
    """Below the minimum work per worker nothing is handed to the threads."""
    monkeypatch.setattr(parallel, "split", lambda n, fn: pytest.fail("split a tiny array"))
    parallel.set_workers(2)
    try:
        x = np.random.default_rng(0).standard_normal((4, 3, 8, 8)).astype(np.float32)
        for layer in (ReLU(), BatchNorm2D(3).build(), MaxPool2D(3, 2), AvgPool2D(3, 2), LRN()):
            y = layer.forward(x.copy())
            layer.backward(np.ones_like(y))
    finally:
        parallel.set_workers(1)


def test_large_arrays_are_split(monkeypatch):
    """At the real threshold a large enough input is split."""
    record = []
    inner = parallel.split
    monkeypatch.setattr(parallel, "split", lambda n, fn: record.append(n) or inner(n, fn))
    parallel.set_workers(2)
    try:
        x = np.random.default_rng(0).standard_normal((4, 8, 64, 64)).astype(np.float32)
        for layer in (ReLU(), BatchNorm2D(8).build(), MaxPool2D(3, 2), AvgPool2D(3, 2), LRN()):
            record.clear()
            y = layer.forward(x.copy())
            layer.backward(np.ones_like(y))
            # one split per pass; BatchNorm's C passes are two each way (the moments and the
            # affine pass, the sums and dx)
            two_each = isinstance(layer, BatchNorm2D) and batch_norm_c.library(x.dtype)
            assert len(record) == (4 if two_each else 2), layer.name
    finally:
        parallel.set_workers(1)


@pytest.mark.parametrize("channel_major", [True, False])
@pytest.mark.parametrize("workers", [1, 2, 3])
@pytest.mark.parametrize("shape, block", [((5, 3, 6, 7), 1 << 15), ((5, 3, 6, 7), 50),
                                          ((4, 2, 3, 3), 7)])
def test_relu_on_the_channel_slices_concat_hands_its_branches(shape, block, workers,
                                                              channel_major, calls, monkeypatch):
    """A Concat branch gets x and dy[:, c0:c1]: in channel-major memory one dense block, which
    forward and backward split over the workers (backward in tiles of BLOCK elements, across
    planes); in C order the samples lie apart, and one NumPy call does it. Either way the
    views themselves are written and the other channels are left alone."""
    from layers import relu
    monkeypatch.setattr(relu, "BLOCK", block)
    parallel.set_workers(workers)
    rng = np.random.default_rng(7)
    n, c, h, w = shape
    arrange = layout.to_channel_major if channel_major else np.ascontiguousarray
    whole = arrange(rng.standard_normal((n, 3 * c, h, w)))
    x = whole[:, c:2 * c]
    expected_y = np.maximum(x, 0)
    layer = ReLU(inplace=True)
    assert layer.forward(x) is x
    np.testing.assert_array_equal(x, expected_y)
    grads = arrange(rng.standard_normal((n, 3 * c, h, w)))
    dy = grads[:, 2 * c:]
    expected_dx, rest = np.where(expected_y > 0, dy, 0), grads[:, :2 * c].copy()
    assert layer.backward(dy) is dy
    np.testing.assert_array_equal(dy, expected_dx)
    np.testing.assert_array_equal(grads[:, :2 * c], rest)     # the other channels untouched
    assert bool(calls) == (workers > 1 and channel_major)


def test_flat_pair_needs_two_dense_arrays_laid_out_alike():
    from layers.relu import flat_pair
    a = np.arange(4 * 6 * 5 * 5, dtype=np.float32).reshape(4, 6, 5, 5)
    cm = layout.to_channel_major(a)
    fa, fb = flat_pair(a, np.empty_like(a))
    assert fa.shape == (600,) and np.shares_memory(fa, a)
    fa, fb = flat_pair(cm, np.empty_like(cm))                # empty_like keeps the layout
    assert np.shares_memory(fa, cm) and fa[25] == cm[1, 0, 0, 0]   # sample 1 after sample 0
    assert flat_pair(cm[:, 2:5], cm[:, 2:5]) is not None       # a channel range: one block
    assert flat_pair(a[:, 2:5], a[:, 2:5]) is None             # samples apart
    assert flat_pair(a, cm) is None                            # laid out differently
