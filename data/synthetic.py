"""Generated image data: learnable classes in memory, and ImageNet-shaped random batch files.

``make_splits`` (``data.dataset: synthetic`` in the config): each class c has a fixed smooth
template T_c (a sum of random low-frequency sinusoids, unit variance); an image of class c is
``clip(128 + 24 (T_c + noise * N(0, 1)))`` as uint8, so accuracy depends on ``noise``.

``python -m data.prepare synthetic OUT``: uniform random uint8 images and labels, ImageNet's
shape by default (3 x 256 x 256, 1000 classes), for loader and step benchmarks.
"""
import numpy as np

from data.format import ArraySplit
from data.source import PrepareError

HELP = "random ImageNet-shaped batches (uniform uint8 pixels and labels), for benchmarks"


def class_templates(num_classes, channels, size, rng, waves=4):
    yy, xx = np.mgrid[0:size, 0:size] / size
    templates = np.zeros((num_classes, channels, size, size))
    for c in range(num_classes):
        for ch in range(channels):
            for _ in range(waves):
                fy, fx = rng.uniform(0.5, 3.0, size=2)
                phase = rng.uniform(0, 2 * np.pi)
                templates[c, ch] += np.sin(2 * np.pi * (fy * yy + fx * xx) + phase)
    return templates * np.sqrt(2.0 / waves)


def make_splits(num_train, num_val, channels, size, num_classes, noise=1.0, seed=0):
    """``(train, val)`` in-memory splits of generated uint8 images (N, C, size, size)."""
    rng = np.random.default_rng(seed)
    templates = class_templates(num_classes, channels, size, rng)

    def split(name, n):
        labels = rng.integers(0, num_classes, size=n)
        images = templates[labels] + noise * rng.standard_normal((n, channels, size, size))
        images = np.clip(np.rint(128 + 24 * images), 0, 255).astype(np.uint8)
        return ArraySplit(name, images, labels.astype(np.int64))

    return split("train", num_train), split("val", num_val)


def mean_image(split):
    """The mean image (C, H, W) float32 of an in-memory split."""
    return split.images.mean(axis=0, dtype=np.float64).astype(np.float32)


# -- the prepare source ---------------------------------------------------------------------
def add_arguments(parser, name):
    parser.add_argument("--train-batches", type=int, default=16, help="training batch files")
    parser.add_argument("--val-batches", type=int, default=4, help="validation batch files")
    parser.add_argument("--batch-size", type=int, default=128, help="images per batch file")
    parser.add_argument("--image-size", type=int, default=256, help="image height and width")
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--classes", type=int, default=1000)


class RandomSource:
    """Uniform random batches; batch i of a split depends only on (seed, split, i)."""

    def __init__(self, args):
        self.name, self.channels = "synthetic", args.channels
        self.image_size = (args.image_size, args.image_size)
        self.classes = [f"class{c:04d}" for c in range(args.classes)]
        self.batches = {"train": args.train_batches, "val": args.val_batches}
        self.batch_size, self.seed = args.batch_size, args.seed
        self.options = {k: getattr(args, k) for k in ("train_batches", "val_batches",
                                                      "batch_size", "image_size", "channels",
                                                      "classes", "seed")}

    def jobs(self):
        return {split: list(range(n)) for split, n in self.batches.items()}

    def make_batch(self, split, index):
        rng = np.random.default_rng([self.seed, ("train", "val").index(split), index])
        shape = (self.batch_size, self.channels) + self.image_size
        images = rng.integers(0, 256, size=shape, dtype=np.uint8)
        labels = rng.integers(0, len(self.classes), size=self.batch_size)
        return images, labels, 0


def make_source(name, args):
    for option in ("train_batches", "val_batches", "batch_size", "image_size", "channels"):
        if getattr(args, option) < 1:
            raise PrepareError(f"--{option.replace('_', '-')} must be at least 1, got "
                               f"{getattr(args, option)}")
    if args.classes < 2:
        raise PrepareError(f"--classes must be at least 2, got {args.classes}")
    return RandomSource(args)
