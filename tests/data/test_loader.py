"""The loader: sharding over ranks, crop/mirror/mean with labels kept aligned, prefetch."""
import threading

import numpy as np
import pytest

from data.format import ArraySplit
from data.loader import Loader, epoch_plan, file_order


def images_of(plan, counts, epoch, seed, train):
    """The global image indices (file offset + position) of a plan's batches."""
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return [np.concatenate([offsets[f] + file_order(counts[f], epoch, seed, f, train)[s:e]
                            for f, s, e in pieces]) for pieces in plan]


@pytest.mark.parametrize("size", [1, 2, 3, 4])
@pytest.mark.parametrize("counts, batch", [([128] * 7 + [37], 64), ([10] * 9, 7),
                                           ([5, 5, 5], 4), ([50], 3)])
def test_training_shards_use_every_image_at_most_once_with_equal_batches(size, counts, batch):
    total = sum(counts)
    for epoch in range(3):
        plans = [epoch_plan(counts, epoch, 7, r, size, batch, True) for r in range(size)]
        steps = (total // size) // batch
        assert all(len(p) == steps for p in plans)            # every rank the same
        used = np.concatenate([np.concatenate(images_of(p, counts, epoch, 7, True) or [[]])
                               for p in plans]).astype(int)
        assert all(len(b) == batch for p in plans for b in images_of(p, counts, epoch, 7, True))
        assert len(np.unique(used)) == len(used) == steps * batch * size   # none doubled
        assert total - len(used) < size * batch + size       # only a short tail is left out


@pytest.mark.parametrize("size", [1, 2, 3, 4])
def test_each_file_goes_to_one_rank_or_is_split_cleanly_at_a_boundary(size):
    counts = [8] * 12
    owners = {}
    for r in range(size):
        for pieces in epoch_plan(counts, 0, 3, r, size, 4, True):
            for f, s, e in pieces:
                owners.setdefault(f, []).append((r, s, e))
    for f, parts in owners.items():
        ranks = sorted({r for r, _, _ in parts})
        assert len(ranks) <= 2 and (len(ranks) == 1 or ranks[1] == ranks[0] + 1)
        positions = np.concatenate([np.arange(s, e) for _, s, e in parts])
        assert len(np.unique(positions)) == len(positions)


@pytest.mark.parametrize("size", [1, 2, 3, 4])
def test_validation_shards_cover_every_image_exactly_once_in_order(size):
    counts = [6, 6, 6, 5]
    plans = [epoch_plan(counts, 0, 0, r, size, 4, False) for r in range(size)]
    used = np.concatenate([np.concatenate(images_of(p, counts, 0, 0, False)) for p in plans])
    np.testing.assert_array_equal(used, np.arange(sum(counts)))


def test_the_file_order_changes_between_epochs_and_not_between_ranks():
    counts = [4] * 10
    a = epoch_plan(counts, 0, 1, 0, 1, 40, True)
    b = epoch_plan(counts, 1, 1, 0, 1, 40, True)
    assert [f for f, _, _ in a[0]] != [f for f, _, _ in b[0]]
    assert epoch_plan(counts, 1, 1, 0, 2, 4, True)[0] == epoch_plan(counts, 1, 1, 0, 2, 4, True)[0]


def unique_images(n=24, shape=(2, 6, 6), file_size=5, seed=0):
    """A split whose label i is the index of image i, so each output names its source."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n,) + shape, dtype=np.uint8)
    return ArraySplit("train", images, np.arange(n), file_size=file_size), images


def candidates(image, mean, crop, pad):
    """Every padded crop of (image - mean), plain and mirrored."""
    padded = np.pad(image.astype(np.float64) - mean, ((0, 0), (pad, pad), (pad, pad)))
    out = []
    for y in range(padded.shape[1] - crop + 1):
        for x in range(padded.shape[2] - crop + 1):
            window = padded[:, y:y + crop, x:x + crop]
            out += [window, window[:, :, ::-1]]
    return out


@pytest.mark.parametrize("pad", [0, 1])
def test_random_crops_and_mirrors_keep_each_label_with_its_image(pad):
    split, images = unique_images()
    mean = images.mean(axis=0).astype(np.float32)
    loader = Loader(split, mean, 4, train=True, crop=(5, 5), pad=pad, mirror=True,
                    dtype=np.float64, prefetch=0, seed=5)
    flips = offsets = 0
    for x, y in loader.epoch(0):
        for xi, yi in zip(x, y):
            options = candidates(images[yi], mean, 5, pad)
            match = [k for k, c in enumerate(options) if np.allclose(c, xi, atol=1e-4)]
            assert match, f"output labelled {yi} is no crop of image {yi}"
            flips += match[0] % 2
            offsets += match[0] // 2 > 0
    assert 0 < flips < 24 and offsets > 0           # both augmentations really happen


def test_validation_takes_the_center_crop_without_mirror():
    split, images = unique_images(n=8)
    mean = images.mean(axis=0).astype(np.float32)
    loader = Loader(split, mean, 3, train=False, crop=(4, 4), mirror=True, dtype=np.float64,
                    prefetch=0)
    batches = [(x.copy(), y) for x, y in loader.epoch(0)]   # a batch is reused after the next
    assert [len(x) for x, _ in batches] == [3, 3, 2]
    x = np.concatenate([b[0] for b in batches])
    np.testing.assert_allclose(x, (images.astype(np.float64) - mean)[:, :, 1:5, 1:5], atol=1e-5)
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), np.arange(8))


def test_scale_multiplies_the_mean_subtracted_image():
    split, images = unique_images(n=4)
    mean = np.zeros(images.shape[1:], np.float32)
    (x, _), = Loader(split, mean, 4, train=False, scale=0.5, prefetch=0).epoch(0)
    np.testing.assert_allclose(x, images * 0.5)


def test_prefetch_gives_the_same_batches_as_loading_in_line():
    split, images = unique_images(n=40)
    mean = images.mean(axis=0).astype(np.float32)
    kwargs = dict(crop=(4, 4), pad=1, mirror=True, seed=3, rank=1, size=2)
    inline = [(x.copy(), y) for x, y in Loader(split, mean, 4, train=True, prefetch=0,
                                               **kwargs).epoch(2)]
    loader = Loader(split, mean, 4, train=True, prefetch=2, **kwargs)
    ahead = [(x.copy(), y) for x, y in loader.epoch(2)]
    assert len(inline) == len(ahead) == 5
    for (a, ya), (b, yb) in zip(inline, ahead):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(ya, yb)
    assert loader.wait_time >= 0


def test_a_failing_read_reaches_the_consumer_and_stops_the_thread(monkeypatch):
    split, images = unique_images(n=40)
    calls = []

    def broken_read(i, out=None):
        calls.append(i)
        if len(calls) == 3:
            raise OSError("disk on fire")
        return images[split.offsets[i]:split.offsets[i] + split.counts[i]]
    monkeypatch.setattr(split, "read", broken_read)
    loader = Loader(split, images.mean(axis=0), 5, train=True, prefetch=2)
    with pytest.raises(OSError, match="disk on fire"):
        list(loader.epoch(0))
    assert not [t for t in threading.enumerate() if t.name.startswith("loader-")]


def test_leaving_an_epoch_early_stops_the_prefetch_thread():
    split, images = unique_images(n=40)
    loader = Loader(split, images.mean(axis=0), 2, train=True, prefetch=2)
    batches = loader.epoch(0)
    next(batches)
    batches.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("loader-")]


def test_a_crop_larger_than_the_images_is_refused():
    split, images = unique_images(n=4)
    with pytest.raises(ValueError, match="crop"):
        Loader(split, images.mean(axis=0), 2, train=False, crop=(7, 7))
