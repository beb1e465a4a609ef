"""Batches of one split for one rank: sharding, augmentation and background prefetch.

Order of an epoch (the same on every rank, from the shared ``seed``): the files are shuffled,
each file's images are permuted, and the concatenation is the epoch's image stream. Rank r of
``size`` takes the contiguous part ``[r N / size, (r + 1) N / size)`` of the stream, so every
file is read by one rank (two where a boundary cuts it) and no image is used twice. In training
every rank makes the same number of batches, ``(N // size) // batch_size``; the few images
left over (fewer than ``size * batch_size``) change from epoch to epoch. Validation keeps the
stream in file order, unshuffled, and every image (the last batch may be short).

Each training image gets a random crop (after zero padding of ``pad`` pixels, in mean-subtracted
units) and, with ``mirror``, a coin-flip horizontal flip; validation takes the center crop. The
output is ``(image - mean) * scale`` in the model's dtype.

With ``prefetch`` > 0 a background thread prepares the next batches while the model trains
(NumPy releases the GIL in its copies), across epoch boundaries with ``stream``; a yielded
batch stays valid until the next one is requested, and ``wait_time`` adds up the seconds the
consumer waited for data.
"""
import itertools
import queue
import threading
import time

import numpy as np


def epoch_plan(counts, epoch, seed, rank, size, batch_size, train):
    """The batches of ``rank`` in ``epoch``: a list of batches, each a list of pieces
    ``(file, start, stop)`` meaning positions ``start:stop`` of the file's image order
    (``file_order(...)``)."""
    counts = np.asarray(counts, np.int64)
    order = np.random.default_rng([seed, epoch]).permutation(len(counts)) if train \
        else np.arange(len(counts))
    total = int(counts.sum())
    first, last = rank * total // size, (rank + 1) * total // size
    if train:
        last = first + (total // size) // batch_size * batch_size
    batches, pieces, filled = [], [], 0
    position = 0                        # stream index of the current file's first image
    for f in order:
        n = int(counts[f])
        lo, hi = max(first, position), min(last, position + n)
        position += n
        while lo < hi:
            take = min(hi - lo, batch_size - filled)
            pieces.append((int(f), lo - (position - n), lo - (position - n) + take))
            lo, filled = lo + take, filled + take
            if filled == batch_size:
                batches.append(pieces)
                pieces, filled = [], 0
        if position >= last:
            break
    if pieces:
        batches.append(pieces)
    return batches


def file_order(count, epoch, seed, file, train):
    """The order of a file's images in ``epoch``: a seeded permutation in training (the same
    on every rank, so two ranks sharing a file split it cleanly), file order otherwise."""
    if not train:
        return np.arange(count)
    return np.random.default_rng([seed, epoch, file, 1]).permutation(count)


def crop_offsets(rng, n, height, width, crop, pad, train):
    """Top-left corners (in padded coordinates) of ``n`` crops of ``crop`` (h, w)."""
    if train:
        return (rng.integers(0, height + 2 * pad - crop[0] + 1, size=n),
                rng.integers(0, width + 2 * pad - crop[1] + 1, size=n))
    return (np.full(n, pad + (height - crop[0]) // 2), np.full(n, pad + (width - crop[1]) // 2))


def augment_into(out, images, index, mean, top, left, flip, pad):
    """out[i] = crop of (images[index[i]] - mean) at (top[i] - pad, left[i] - pad), mirrored
    where ``flip[i]``; the parts of a window outside the image (the padding) are zero."""
    _, height, width = mean.shape
    ch, cw = out.shape[2:]
    for i, j in enumerate(index):
        y0, x0 = int(top[i]) - pad, int(left[i]) - pad
        ys, ye = max(y0, 0), min(y0 + ch, height)
        xs, xe = max(x0, 0), min(x0 + cw, width)
        dst = out[i, :, :, ::-1] if flip[i] else out[i]
        if (ys, ye, xs, xe) != (y0, y0 + ch, x0, x0 + cw):
            out[i].fill(0)
        np.subtract(images[j, :, ys:ye, xs:xe], mean[:, ys:ye, xs:xe],
                    out=dst[:, ys - y0:ye - y0, xs - x0:xe - x0])


class Loader:
    """Batches ``(x, y)`` of ``split`` for ``rank`` of ``size``: x float (B, C, h, w), y int64.

    ``crop`` (h, w) defaults to the image size; ``pad`` and ``mirror`` apply in training."""

    def __init__(self, split, mean, batch_size, *, train, crop=None, pad=0, mirror=False,
                 scale=1.0, dtype=np.float32, rank=0, size=1, seed=0, prefetch=2):
        if not 0 <= rank < size:
            raise ValueError(f"rank {rank} is not in [0, {size})")
        self.split, self.batch_size, self.train = split, batch_size, train
        self.mean = np.ascontiguousarray(mean, np.float32)
        channels, height, width = self.mean.shape
        self.crop = tuple(crop) if crop is not None else (height, width)
        self.pad = pad if train else 0
        if self.crop[0] > height + 2 * self.pad or self.crop[1] > width + 2 * self.pad:
            raise ValueError(f"crop {self.crop} is larger than the {height}x{width} images "
                             f"padded by {self.pad}")
        self.mirror = mirror and train
        self.scale, self.dtype = scale, np.dtype(dtype)
        self.rank, self.size, self.seed = rank, size, seed
        self.prefetch = prefetch
        self.shape = (channels,) + self.crop
        self.wait_time = 0.0
        self._buffers = [None] * (prefetch + 2)          # allocated on first use
        self._file_buffer = None

    def plan(self, epoch):
        return epoch_plan(self.split.counts, epoch, self.seed, self.rank, self.size,
                          self.batch_size, self.train)

    @property
    def steps_per_epoch(self):
        """Batches per epoch on this rank (the same on every rank in training)."""
        return len(self.plan(0))

    def epoch(self, epoch, start=0):
        """Iterator over this rank's batches of ``epoch``, from batch ``start`` on (the same
        batches an uninterrupted epoch gives there: a resumed run continues exactly)."""
        items = [(epoch, b, pieces) for b, pieces in enumerate(self.plan(epoch))][start:]
        return self._batches(iter(items))

    def stream(self, epoch, start=0):
        """Batches from batch ``start`` of ``epoch`` on, epoch after epoch without end, so that
        the prefetch runs on across epoch boundaries (training takes exactly
        ``steps_per_epoch`` batches an epoch)."""
        def items():
            first = start
            for e in itertools.count(epoch):
                for b, pieces in enumerate(self.plan(e)):
                    if b >= first:
                        yield e, b, pieces
                first = 0
        return self._batches(items())

    def _batches(self, items):
        if self.prefetch == 0:
            for slot, (epoch, b, pieces) in enumerate(items):
                yield self._make(epoch, b, pieces, slot)
            return
        yield from self._prefetched(items)

    def _prefetched(self, items):
        ready, stop = queue.Queue(maxsize=self.prefetch), threading.Event()
        done = object()

        def produce():
            try:
                for slot, (epoch, b, pieces) in enumerate(items):
                    if stop.is_set():
                        return
                    item = self._make(epoch, b, pieces, slot)
                    while not stop.is_set():
                        try:
                            ready.put(item, timeout=0.1)
                            break
                        except queue.Full:
                            continue
                ready.put(done)
            except BaseException as err:           # handed to the consumer, raised there
                ready.put(err)

        worker = threading.Thread(target=produce, name=f"loader-{self.split.name}", daemon=True)
        worker.start()
        try:
            while True:
                tick = time.perf_counter()
                item = ready.get()
                self.wait_time += time.perf_counter() - tick
                if item is done:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            worker.join()

    def _read(self, file):
        """File ``file``'s images, read into a reused buffer where the split allows."""
        if self._file_buffer is None:
            shape = (self.split.max_count,) + self.mean.shape \
                if self.split.layout == "NCHW" else self.mean.shape + (self.split.max_count,)
            self._file_buffer = np.empty(shape, np.uint8)
        return self.split.read(file, self._file_buffer)

    def _make(self, epoch, b, pieces, slot):
        """Batch ``b`` of ``epoch`` into ring buffer ``slot`` (counted across epochs, so a
        buffer is rewritten only after ``prefetch + 1`` later batches were handed out)."""
        n = sum(stop - start for _, start, stop in pieces)
        ring = slot % len(self._buffers)
        if self._buffers[ring] is None:
            self._buffers[ring] = np.empty((self.batch_size,) + self.shape, self.dtype)
        x = self._buffers[ring][:n]
        rng = np.random.default_rng([self.seed, epoch, self.rank, b, 2])
        top, left = crop_offsets(rng, n, *self.mean.shape[1:], self.crop, self.pad, self.train)
        flip = rng.random(n) < 0.5 if self.mirror else np.zeros(n, bool)
        labels, filled = [], 0
        for file, start, stop in pieces:
            images = self._read(file)
            index = file_order(len(images), epoch, self.seed, file, self.train)[start:stop]
            rows = slice(filled, filled + len(index))
            augment_into(x[rows], images, index, self.mean, top[rows], left[rows], flip[rows],
                         self.pad)
            labels.append(self.split.labels[self.split.offsets[file] + index])
            filled += len(index)
        if self.scale != 1:
            x *= self.dtype.type(self.scale)
        return x, np.concatenate(labels)
