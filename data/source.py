"""What a ``data.prepare`` source is made of (``data/prepare.py`` runs them).

A source has ``name``, ``channels``, ``image_size``, ``classes``, ``options`` (recorded in the
metadata), ``jobs()`` -> {split: [payload, ...]} (one payload per batch file) and
``make_batch(split, payload)`` -> (uint8 (B, C, H, W) images, labels, images skipped);
optionally ``class_names``. Sources raise ``PrepareError`` for input they cannot use.
"""
import numpy as np


class PrepareError(RuntimeError):
    """The source cannot be prepared (missing input, bad options); the message says why."""


class ArraySource:
    """A source whose images are in memory (``images`` / ``labels``: {split: array}, images
    (N, C, H, W) uint8): batch files of ``batch_size`` consecutive images."""

    def __init__(self, name, classes, images, labels, batch_size, options):
        self.name, self.classes, self.batch_size = name, list(classes), batch_size
        self.images, self.labels, self.options = images, labels, options
        self.channels, self.image_size = images["train"].shape[1], images["train"].shape[2:]

    def jobs(self):
        return {split: [(s, min(s + self.batch_size, len(images)))
                        for s in range(0, len(images), self.batch_size)]
                for split, images in self.images.items()}

    def make_batch(self, split, payload):
        start, stop = payload
        return self.images[split][start:stop], \
            self.labels[split][start:stop].astype(np.int64), 0


def shuffled_train(images, labels, seed):
    """The training split in one order fixed by ``seed`` (the test split keeps its own)."""
    order = np.random.default_rng(seed).permutation(len(images))
    return images[order], labels[order]
