"""The ``imagefolder`` source of ``python -m data.prepare``: a folder of images per class.

    python -m data.prepare imagefolder OUT --source DIR [--size 256] [--resize crop|stretch]
                                           [--val-fraction 0.1] [--batch-size 128] [--seed 0]

``DIR`` holds one subfolder per class (ImageNet layout; class names are the sorted folder
names, images may sit in nested folders), or ``train/`` and ``val/`` subfolders that each hold
the same class folders (the splits are then used as they are). Otherwise ``--val-fraction`` of
each class, chosen with ``--seed``, goes to the validation split. Each split's files are
shuffled once with ``--seed`` and cut into batch files of ``--batch-size`` images.

Images (.jpg .jpeg .png .bmp .gif .webp, any case; other files are ignored) become RGB:
grayscale, palette, CMYK and 16-bit images are converted, transparency is composited over
white. ``--resize crop`` (the default) scales the shorter side to ``--size`` and takes the
center square; ``--resize stretch`` scales the whole image to ``size x size``. JPEGs are
decoded at a reduced scale (``Image.draft``) when that still leaves every side >= ``size``.
Unreadable images are skipped with a message on stderr and counted.
"""
import os
import struct
import sys
from pathlib import Path

import numpy as np

from data.source import PrepareError

# Pillow is imported where images are decoded, so the other sources of data.prepare (which
# imports this module to build its parser) work without it.
HELP = "one folder of JPEG/PNG images per class (ImageNet layout), or train/ and val/ of them"
EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
RESIZE_MODES = ("crop", "stretch")
# What Pillow raises on a damaged or unsupported file (decoders are not uniform about it).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error)


def add_arguments(parser, name):
    # dest is not "source": the sub-parser's choice is stored there.
    parser.add_argument("--source", dest="folder", type=Path, required=True, metavar="DIR",
                        help="folder of class subfolders of images, or of train/ and val/ "
                             "subfolders that each hold the same class subfolders")
    parser.add_argument("--size", type=int, default=256,
                        help="side S of the square S x S images written (default 256)")
    parser.add_argument("--resize", choices=RESIZE_MODES, default="crop",
                        help="crop: shorter side to S, then the center square (default); "
                             "stretch: the whole image to S x S, ignoring the aspect ratio")
    parser.add_argument("--val-fraction", type=float, default=0.1,
                        help="fraction of each class put in the validation split when DIR "
                             "has no train/ and val/ subfolders (default 0.1)")
    parser.add_argument("--batch-size", type=int, default=128,
                        help="images per batch file (default 128)")


def make_source(name, args):
    if args.size < 1:
        raise PrepareError(f"--size must be at least 1, got {args.size}")
    if args.batch_size < 1:
        raise PrepareError(f"--batch-size must be at least 1, got {args.batch_size}")
    if not 0 <= args.val_fraction < 1:
        raise PrepareError(f"--val-fraction must lie in [0, 1), got {args.val_fraction}")
    return ImageFolder(name, args.folder, args.size, args.resize, args.val_fraction,
                       args.batch_size, args.seed)


def is_image(name):
    return not name.startswith(".") and name.lower().endswith(EXTENSIONS)


def _class_folders(folder):
    """{class name: its folder} for the visible subfolders of ``folder``."""
    return {entry.name: Path(entry.path) for entry in os.scandir(folder)
            if entry.is_dir() and not entry.name.startswith(".")}


def image_files(folder):
    """The image files under ``folder`` (recursively, hidden entries skipped), sorted."""
    found = []
    for parent, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(os.path.join(parent, f) for f in sorted(files) if is_image(f))
    return found


def _scan(root, folder):
    """(sorted class names, one list of image paths relative to ``root`` per class)."""
    classes = _class_folders(folder)
    if not classes:
        raise PrepareError(f"{folder}: no class folders (expected one subfolder of images per "
                           f"class, or train/ and val/ subfolders that hold them)")
    names = sorted(classes)
    if len(names) < 2:
        raise PrepareError(f"{folder}: only one class folder ({names[0]!r}); classification "
                           f"needs at least 2")
    files = []
    for name in names:
        paths = image_files(classes[name])
        if not paths:
            raise PrepareError(f"{classes[name]}: class folder {name!r} holds no images "
                               f"({' '.join(EXTENSIONS)})")
        files.append([Path(p).relative_to(root).as_posix() for p in paths])
    return names, files


def _batches(items, batch_size):
    return [items[i:i + batch_size] for i in range(0, len(items), batch_size)]


def _to_rgb(image):
    """``image`` as an RGB image: 16-bit gray scaled to 8 bits, transparency over white."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        from PIL import Image
        pixels = np.clip(np.asarray(image), 0, 65535).astype(np.uint16) >> 8
        image = Image.fromarray(pixels.astype(np.uint8), "L")
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        from PIL import Image
        image = image.convert("RGBA")
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, image)
    return image.convert("RGB")


class ImageFolder:
    """A class-per-folder image tree as a ``data.prepare`` source (see the module docstring).

    A job payload is a list of (where, label) pairs: ``where`` is the image's path relative to
    the source folder, which ``open`` turns into what Pillow reads (a subclass may use other
    places, such as members of tar files)."""

    channels = 3

    def __init__(self, name, source, size, resize, val_fraction, batch_size, seed):
        self.name = name
        self.root = Path(source).expanduser().resolve()
        self.size, self.resize, self.batch_size = size, resize, batch_size
        self.image_size = (size, size)
        if not self.root.is_dir():
            raise PrepareError(f"{self.root}: source folder not found"
                               if not self.root.exists() else f"{self.root}: not a folder")
        rng = np.random.default_rng(seed)
        has_train, has_val = (self.root / "train").is_dir(), (self.root / "val").is_dir()
        if has_train != has_val:
            present, missing = ("train", "val") if has_train else ("val", "train")
            raise PrepareError(f"{self.root}: has a {present}/ folder but no {missing}/; give "
                               f"both (split as they are) or neither (one folder per class)")
        if has_train:
            self.classes, train_files = _scan(self.root, self.root / "train")
            val_classes, val_files = _scan(self.root, self.root / "val")
            if val_classes != self.classes:
                raise PrepareError(
                    f"{self.root}: train/ and val/ hold different class folders (only in "
                    f"train/: {sorted(set(self.classes) - set(val_classes))}, only in val/: "
                    f"{sorted(set(val_classes) - set(self.classes))})")
            train = [(p, c) for c, paths in enumerate(train_files) for p in paths]
            val = [(p, c) for c, paths in enumerate(val_files) for p in paths]
            val_fraction = None     # the split is given by the folders
        else:
            self.classes, files = _scan(self.root, self.root)
            train, val = [], []
            for c, paths in enumerate(files):
                # Rounded half up; every class keeps at least one training image.
                n_val = min(int(val_fraction * len(paths) + 0.5), len(paths) - 1)
                order = rng.permutation(len(paths))
                val += [(paths[i], c) for i in order[:n_val]]
                train += [(paths[i], c) for i in order[n_val:]]
        self.splits = {"train": [train[i] for i in rng.permutation(len(train))],
                       "val": [val[i] for i in rng.permutation(len(val))]}
        self.options = {"source": str(self.root), "size": size, "resize": resize,
                        "val_fraction": val_fraction, "batch_size": batch_size, "seed": seed,
                        "images": {split: len(items) for split, items in self.splits.items()}}

    def jobs(self):
        return {split: _batches(items, self.batch_size) for split, items in self.splits.items()}

    def load(self, file):
        """The image in ``file`` (a path or a binary file) as a uint8 (3, S, S) array, resized
        as configured."""
        from PIL import Image
        with Image.open(file) as image:
            # JPEG only: decode at 1/2, 1/4 or 1/8 scale while both sides stay >= size.
            image.draft("RGB", self.image_size)
            image = _to_rgb(image)
            width, height = image.size
            box = (0, 0, width, height)
            if self.resize == "crop":
                side = min(width, height)
                left, top = (width - side) / 2, (height - side) / 2
                box = (left, top, left + side, top + side)
            image = image.resize(self.image_size, Image.Resampling.BILINEAR, box=box,
                                 reducing_gap=3.0)
        return np.asarray(image).transpose(2, 0, 1)

    def open(self, where):
        """What Pillow opens for a payload's ``where``: here a path under the source."""
        return self.root / where

    def describe(self, where):
        return str(self.root / where)

    def make_batch(self, split, payload):
        """(images, labels, images skipped) of one batch file; the images live in a buffer
        this process reuses (fresh memory is slow to touch), valid until the next call."""
        from PIL import Image
        if getattr(self, "_buffer", None) is None or len(self._buffer) < len(payload):
            self._buffer = np.empty((len(payload), 3) + self.image_size, np.uint8)
        images = self._buffer[:len(payload)]
        labels = np.empty(len(payload), np.int64)
        count = 0
        for where, label in payload:
            try:
                images[count] = self.load(self.open(where))
            except (*_DECODE_ERRORS, Image.DecompressionBombError) as err:
                print(f"data.prepare: skipping {self.describe(where)}: {type(err).__name__}: "
                      f"{err}", file=sys.stderr)
                continue
            labels[count] = label
            count += 1
        return images[:count], labels[:count], len(payload) - count
