"""The ``imagenet`` source of ``python -m data.prepare``: ILSVRC-2012 as downloaded.

    python -m data.prepare imagenet OUT --source DIR [--val-labels FILE] [--synsets FILE]
                                        [--names FILE] [--size 256] [--batch-size 128]

``DIR`` holds

- ``train/`` (or ``ILSVRC2012_img_train/``): a folder of images per class, ``nXXXXXXXX/
  *.JPEG``, or the 1000 per-class ``nXXXXXXXX.tar`` files that the train archive holds
  (unpacking the outer archive is enough; both kinds may mix);
- ``val/`` (or ``ILSVRC2012_img_val/``): the flat folder of ``ILSVRC2012_val_%08d.JPEG``;
- the validation labels, found in ``DIR`` or given with ``--val-labels``: Caffe's ``val.txt``
  (``ILSVRC2012_val_00000001.JPEG 65``, the index among the sorted WNIDs), Kaggle's
  ``LOC_val_solution.csv`` (``ILSVRC2012_val_00000001,n01751748 ...``: the first WNID), or the
  devkit's ``ILSVRC2012_validation_ground_truth.txt`` (line i: the ILSVRC2012_ID of image i),
  which needs ``--synsets``: the WNIDs in ILSVRC2012_ID order, one per line (``n02119789``,
  or ``1 n02119789 ...``), as the devkit's ``meta.mat`` lists them;
- optionally ``synset_words.txt`` or ``LOC_synset_mapping.txt`` (``n01440764 tench, Tinca
  tinca``), or ``--names``: the classes' readable names, kept in the metadata.

Class index = the WNID's place among the sorted training WNIDs (the convention of Caffe,
torchvision and Theano-MPI's labels). Images are decoded and resized as ``imagefolder`` does
(shorter side to ``--size``, then the centre square; CMYK and grayscale JPEGs become RGB, a PNG
named ``.JPEG`` is read as the PNG it is, an unreadable file is skipped with its name). The
training images are shuffled once with ``--seed``; validation keeps the file order.
"""
import csv
import os
import tarfile
from io import BytesIO
from pathlib import Path

import numpy as np

from data.imagefolder import ImageFolder, image_files, is_image
from data.source import PrepareError

HELP = "ILSVRC-2012 as downloaded: train/ class folders or per-class .tar files, flat val/"
TRAIN_NAMES, VAL_NAMES = ("train", "ILSVRC2012_img_train"), ("val", "ILSVRC2012_img_val")
LABEL_FILES = ("val.txt", "LOC_val_solution.csv", "ILSVRC2012_validation_ground_truth.txt")
NAME_FILES = ("synset_words.txt", "LOC_synset_mapping.txt")


def add_arguments(parser, name):
    parser.add_argument("--source", dest="folder", type=Path, required=True, metavar="DIR",
                        help="folder holding train/ and val/ (or ILSVRC2012_img_train/ and "
                             "ILSVRC2012_img_val/) and the validation labels")
    parser.add_argument("--val-labels", type=Path, default=None, metavar="FILE",
                        help=f"validation labels (default: the first of {', '.join(LABEL_FILES)} "
                             f"found in DIR)")
    parser.add_argument("--synsets", type=Path, default=None, metavar="FILE",
                        help="WNIDs in ILSVRC2012_ID order, for the devkit's ground truth")
    parser.add_argument("--names", type=Path, default=None, metavar="FILE",
                        help=f"readable class names (default: {' or '.join(NAME_FILES)} in DIR)")
    parser.add_argument("--size", type=int, default=256,
                        help="side S of the S x S images written (default 256)")
    parser.add_argument("--batch-size", type=int, default=128,
                        help="images per batch file (default 128)")


def make_source(name, args):
    if args.size < 1 or args.batch_size < 1:
        raise PrepareError(f"--size and --batch-size must be at least 1, got {args.size} and "
                           f"{args.batch_size}")
    return ImageNet(name, args)


def _one_of(root, names, what):
    for name in names:
        if (root / name).is_dir():
            return root / name
    raise PrepareError(f"{root}: no {what} folder (expected {' or '.join(names)}/)")


def _tar_members(path, root):
    """The images in a per-class tar file, each as (the tar's path relative to ``root``,
    offset of its data, its size, its name), in the tar's order."""
    relative = path.relative_to(root).as_posix()
    try:
        with tarfile.open(path, "r:") as tar:
            return [(relative, m.offset_data, m.size, m.name) for m in tar
                    if m.isfile() and is_image(m.name.rsplit("/", 1)[-1])]
    except (tarfile.TarError, OSError) as err:
        raise PrepareError(f"{path}: not a readable tar file of images ({err})") from None


def _scan_train(root, train):
    """(sorted WNIDs, [(where, label)]) of the training tree, folders and tar files."""
    entries = sorted(os.scandir(train), key=lambda e: e.name)
    classes = {}
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            files = [Path(p).relative_to(root).as_posix() for p in image_files(entry.path)]
            classes.setdefault(entry.name, []).extend(files)
        elif entry.name.endswith(".tar"):
            classes.setdefault(entry.name[:-4], []).extend(_tar_members(Path(entry.path), root))
    empty = [wnid for wnid, items in classes.items() if not items]
    if len(classes) < 2 or empty:
        raise PrepareError(f"{train}: expected a folder or .tar file of images per class "
                           f"(nXXXXXXXX/ or nXXXXXXXX.tar); found {len(classes)} classes"
                           + (f", of which {', '.join(empty[:5])} hold no images" if empty
                              else ""))
    wnids = sorted(classes)
    return wnids, [(where, c) for c, wnid in enumerate(wnids) for where in classes[wnid]]


def _lines(path):
    try:
        return [line.split() for line in path.read_text().splitlines() if line.strip()]
    except OSError as err:
        raise PrepareError(f"{path}: cannot read it ({err})") from None


def _devkit_synsets(path):
    """WNIDs in ILSVRC2012_ID order: line k names ID k, or lines say 'ID WNID'."""
    rows = _lines(path)
    if rows and all(len(r) >= 2 and r[0].isdigit() for r in rows):
        return {int(r[0]): r[1] for r in rows}
    return {k: r[0] for k, r in enumerate(rows, 1)}


def _val_labels(path, wnids, synsets):
    """{image stem: class index} from one of the three label files."""
    index = {w: i for i, w in enumerate(wnids)}
    if path.name.endswith(".csv"):
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
        if not rows or rows[0][:2] != ["ImageId", "PredictionString"]:
            raise PrepareError(f"{path}: expected Kaggle's header ImageId,PredictionString")
        named = {r[0]: r[1].split()[0] for r in rows[1:] if len(r) >= 2 and r[1].strip()}
    elif path.name == LABEL_FILES[2]:
        if synsets is None:
            raise PrepareError(f"{path}: the devkit's labels are ILSVRC2012_IDs; give --synsets "
                               f"FILE, the WNIDs in ID order (from the devkit's meta.mat)")
        ids = _devkit_synsets(synsets)
        try:
            named = {f"ILSVRC2012_val_{i:08d}": ids[int(r[0])]
                     for i, r in enumerate(_lines(path), 1)}
        except (KeyError, ValueError) as err:
            raise PrepareError(f"{path}: ID {err} is not in {synsets}") from None
    else:
        try:
            return {Path(r[0]).stem: int(r[1]) for r in _lines(path)}
        except (IndexError, ValueError):
            raise PrepareError(f"{path}: expected Caffe's lines 'ILSVRC2012_val_00000001.JPEG "
                               f"65'") from None
    unknown = sorted(set(named.values()) - set(index))
    if unknown:
        raise PrepareError(f"{path}: WNIDs with no training class: {', '.join(unknown[:5])}")
    return {stem: index[wnid] for stem, wnid in named.items()}


def _first(root, given, names, what):
    if given is not None:
        if not Path(given).is_file():
            raise PrepareError(f"{given}: {what} file not found")
        return Path(given)
    found = [root / n for n in names if (root / n).is_file()]
    return found[0] if found else None


class ImageNet(ImageFolder):
    """ILSVRC-2012 as a ``data.prepare`` source (see the module docstring)."""

    def __init__(self, name, args):
        self.name, self.root = name, Path(args.folder).expanduser().resolve()
        if not self.root.is_dir():
            raise PrepareError(f"{self.root}: source folder not found")
        self.size, self.resize, self.batch_size = args.size, "crop", args.batch_size
        self.image_size = (args.size, args.size)
        train = _one_of(self.root, TRAIN_NAMES, "training")
        val = _one_of(self.root, VAL_NAMES, "validation")
        self.classes, train_items = _scan_train(self.root, train)
        self.splits = {"train": [train_items[i] for i in
                                 np.random.default_rng(args.seed).permutation(len(train_items))],
                       "val": self._val_items(val, args)}
        names = _first(self.root, args.names, NAME_FILES, "class names")
        if names is not None:
            readable = {r[0]: " ".join(r[1:]) for r in _lines(names)}
            self.class_names = [readable.get(w, w) for w in self.classes]
        self.options = {"source": str(self.root), "size": args.size, "resize": "crop",
                        "batch_size": args.batch_size, "seed": args.seed,
                        "images": {s: len(items) for s, items in self.splits.items()}}

    def _val_items(self, val, args):
        path = _first(self.root, args.val_labels, LABEL_FILES, "validation labels")
        if path is None:
            raise PrepareError(f"{self.root}: no validation labels: put {', '.join(LABEL_FILES)} "
                               f"there, or give --val-labels FILE")
        labels = _val_labels(path, self.classes, args.synsets)
        items = [Path(p).relative_to(self.root).as_posix() for p in image_files(val)]
        missing = [Path(p).name for p in items if Path(p).stem not in labels]
        if missing:
            raise PrepareError(f"{path}: no label for {len(missing)} validation images "
                               f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})")
        bad = [p for p in items if not 0 <= labels[Path(p).stem] < len(self.classes)]
        if bad:
            raise PrepareError(f"{path}: labels outside [0, {len(self.classes)}) for "
                               f"{', '.join(Path(p).name for p in bad[:3])}")
        return [(p, labels[Path(p).stem]) for p in items]

    def open(self, where):
        if isinstance(where, str):
            return self.root / where
        tar, offset, size, _ = where
        with open(self.root / tar, "rb") as f:
            f.seek(offset)
            return BytesIO(f.read(size))

    def describe(self, where):
        return str(self.root / where) if isinstance(where, str) else \
            f"{where[3]} in {self.root / where[0]}"
