"""A prepared dataset on disk: hickle batch files, labels, the mean image and metadata.

Native layout (what ``python -m data.prepare`` writes)::

    DIR/metadata.json      format_version, layout "NCHW", channels, image_size [H, W], classes,
                           source, and per split its image count and files (name, images,
                           bytes, crc32 of the array's bytes)
    DIR/train/0000.hkl     uint8 array (B, C, H, W); B is the batch size (128 by default) for
                           every file but the last, less where unreadable images were skipped
    DIR/val/0000.hkl
    DIR/train_labels.npy   int64 (N_train,), one label per image in file order
    DIR/val_labels.npy
    DIR/img_mean.npy       float32 (C, H, W), the mean training image

The Theano-MPI layout of c01b files is read by ``data/theano_mpi.py``; ``data.dataset.
open_dataset`` opens either.

``open_native(path)`` checks everything it can without reading the images (files present and
of the recorded size, label counts and range, a finite mean of the right shape, a finite pixel
std) and raises ``DataError`` naming the file and the problem; ``Split.read`` checks each
batch's shape and checksum as it loads it.
"""
import contextlib
import json
import os
import shutil
import zlib
from pathlib import Path

import numpy as np

FORMAT_VERSION = 1
METADATA = "metadata.json"
MEAN = "img_mean.npy"
INCOMPLETE = ".incomplete"      # present while data.prepare is writing the folder
RECORDS = ".batches"            # meanwhile: a record of each batch file written
SPLITS = ("train", "val")


class DataError(ValueError):
    """A dataset file is missing, damaged or inconsistent; the message names the file."""


def labels_name(split):
    return f"{split}_labels.npy"


# -- batch files ----------------------------------------------------------------------------
def write_batch(path, images):
    """Write a uint8 image batch as a hickle file; returns its metadata entry (without name)."""
    import hickle
    images = np.ascontiguousarray(images)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"a batch is a uint8 (B, C, H, W) array, got {images.dtype} "
                         f"{images.shape}")
    path = Path(path)
    partial = path.with_name(path.stem + ".partial.hkl")    # whole or absent under its name
    hickle.dump(images, str(partial), mode="w")
    os.replace(partial, path)
    return {"images": int(images.shape[0]), "bytes": os.path.getsize(path),
            "crc32": zlib.crc32(images.data)}


def _array_dataset(handle, path):
    """The h5py dataset holding a hickle file's array: ``data`` (hickle 4/5), else the file's
    only 4-D dataset (older hickle versions name it differently)."""
    import h5py
    node = handle.get("data")
    if isinstance(node, h5py.Dataset):
        return node
    found = []
    handle.visititems(lambda name, obj: found.append(obj)
                      if isinstance(obj, h5py.Dataset) and obj.ndim == 4 else None)
    if len(found) != 1:
        raise DataError(f"{path}: not a hickle batch file (expected one 4-D image array, "
                        f"found {len(found)})")
    return found[0]


@contextlib.contextmanager
def _batch_array(path):
    """The h5py dataset of the batch file at ``path``, open while the block runs; every way
    a missing or damaged file fails becomes a ``DataError`` naming it."""
    import h5py
    try:
        with h5py.File(path, "r") as handle:
            yield _array_dataset(handle, path)
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"{path}: batch file is missing") from None
    except (OSError, KeyError, ValueError, TypeError, RuntimeError) as err:
        raise DataError(f"{path}: cannot read batch file (truncated or corrupted?): "
                        f"{err}") from None


def batch_shape(path):
    """The stored array's shape and dtype, read from the file's header only."""
    with _batch_array(path) as node:
        return tuple(node.shape), np.dtype(node.dtype)


def read_batch(path, out=None):
    """The stored uint8 array, read into ``out`` (same shape, C-contiguous) when given."""
    with _batch_array(path) as node:
        if node.dtype != np.uint8 or node.ndim != 4:
            raise DataError(f"{path}: expected a uint8 4-D image array, found "
                            f"{node.dtype} {node.shape}")
        if out is None:
            out = np.empty(node.shape, np.uint8)
        elif out.shape != node.shape:
            raise DataError(f"{path}: expected an array of shape {out.shape}, found "
                            f"{node.shape}")
        if out.size:
            node.read_direct(out)
        return out


# -- reading a dataset ----------------------------------------------------------------------
class Split:
    """The batch files of one split, in file order, with their labels.

    ``counts[i]`` images are in file ``i``; ``offsets[i]`` is the index of its first label.
    ``read(i, out)`` returns file ``i``'s images as an ``(B, C, H, W)`` uint8 array (a
    transposed view for c01b files)."""

    def __init__(self, name, files, counts, labels, layout="NCHW", crcs=None):
        self.name, self.files, self.layout = name, list(files), layout
        self.counts = np.asarray(counts, dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)[:-1]]).astype(np.int64)
        self.labels = labels
        self.crcs = crcs
        self.verify = True

    def __len__(self):
        return int(self.counts.sum())

    @property
    def max_count(self):
        return int(self.counts.max()) if len(self.counts) else 0

    def read(self, i, out=None):
        path = self.files[i]
        count = int(self.counts[i])
        if out is not None:
            shape = out.shape[1:] if self.layout == "NCHW" else out.shape[:3]
            out = out[:count] if self.layout == "NCHW" else out[..., :count]
            if out.shape != ((count,) + shape if self.layout == "NCHW" else shape + (count,)):
                out = None
        images = read_batch(path, out)
        if self.layout == "c01b":
            if images.shape[3] != count:
                raise DataError(f"{path}: expected {count} images, found {images.shape[3]}")
            images = images.transpose(3, 0, 1, 2)
        elif images.shape[0] != count:
            raise DataError(f"{path}: expected {count} images, found {images.shape[0]}")
        if self.verify and self.crcs is not None:
            crc = zlib.crc32(images.data)
            if crc != self.crcs[i]:
                raise DataError(f"{path}: checksum mismatch (crc32 {crc:#010x}, metadata says "
                                f"{self.crcs[i]:#010x}): the file is corrupted")
        return images


class ArraySplit(Split):
    """A split held in memory (generated data): ``images`` (N, C, H, W) uint8 cut into
    virtual files of ``file_size`` images."""

    def __init__(self, name, images, labels, file_size=128):
        n = len(images)
        counts = [min(file_size, n - s) for s in range(0, n, file_size)]
        super().__init__(name, [f"<{name} images {s}:{s + c}>" for s, c in
                                zip(range(0, n, file_size), counts)], counts, labels)
        self.images = images

    def read(self, i, out=None):
        start = int(self.offsets[i])
        return self.images[start:start + int(self.counts[i])]


def estimate_pixel_std(split, mean, files=4):
    """The std of (image - mean) over the pixels of the first ``files`` files of ``split``."""
    total, count = 0.0, 0
    for i in range(min(files, len(split.counts))):
        residual = split.read(i).astype(np.float32) - mean
        total, count = total + float(np.vdot(residual, residual)), count + residual.size
    return float(np.sqrt(total / max(count, 1)))


class Dataset:
    """A prepared dataset: ``train`` and ``val`` splits, ``mean`` (C, H, W) float32, the std of
    the mean-subtracted pixels, the geometry ``channels``, ``image_size`` (H, W),
    ``num_classes``, ``classes``, and ``notes``: what opening it decided that the user should
    read (labels cut, where the class count came from)."""

    def __init__(self, path, train, val, mean, classes, source, layout, pixel_std=None,
                 notes=()):
        self.path, self.train, self.val, self.mean = path, train, val, mean
        self.notes = list(notes)
        self.pixel_std = pixel_std if pixel_std is not None else estimate_pixel_std(train, mean)
        self.channels = int(mean.shape[0])
        self.image_size = (int(mean.shape[1]), int(mean.shape[2]))
        self.classes, self.num_classes = classes, len(classes)
        self.source, self.layout = source, layout

    def split(self, name):
        return {"train": self.train, "val": self.val}[name]

    def __repr__(self):
        return (f"Dataset({str(self.path)!r}, {self.layout}, {len(self.train)} train / "
                f"{len(self.val)} val images, {self.channels}x{self.image_size[0]}x"
                f"{self.image_size[1]}, {self.num_classes} classes, source {self.source!r})")


def _read_text(path):
    try:
        return path.read_text()
    except OSError:
        return None


def load_npy(path, what):
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"{path}: {what} file is missing") from None
    except Exception as err:        # a damaged header fails in many ways inside NumPy
        raise DataError(f"{path}: cannot read {what} (truncated or corrupted?): "
                        f"{type(err).__name__}: {err}") from None


def check_labels(path, labels, count, num_classes):
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: labels must be a 1-D integer array, found {labels.dtype} "
                        f"{labels.shape}")
    if len(labels) != count:
        raise DataError(f"{path}: {len(labels)} labels for {count} images in the batch files")
    if count and (labels.min() < 0 or (num_classes and labels.max() >= num_classes)):
        raise DataError(f"{path}: labels must lie in [0, {num_classes}), found "
                        f"[{labels.min()}, {labels.max()}]")
    return labels.astype(np.int64, copy=False)


def check_mean(path, mean, shape):
    """The mean image as float32, after checking its shape and that every value is finite (a
    NaN here would only show as a NaN loss at the first step)."""
    if mean.shape != tuple(shape):
        raise DataError(f"{path}: mean image has shape {mean.shape}, expected {tuple(shape)} "
                        f"(C, H, W) to match the batch files")
    if not np.issubdtype(mean.dtype, np.number) or not np.isfinite(mean).all():
        bad = "not numbers" if not np.issubdtype(mean.dtype, np.number) else \
            f"{int((~np.isfinite(mean)).sum())} values that are NaN or infinite"
        raise DataError(f"{path}: the mean image holds {bad}; prepare the dataset again")
    return mean.astype(np.float32, copy=False)


def read_metadata(root):
    path = Path(root) / METADATA
    try:
        meta = json.loads(path.read_text())
        if not isinstance(meta, dict):
            raise ValueError("not a JSON object")
        version = meta.get("format_version")
        if version != FORMAT_VERSION:
            raise ValueError(f"format_version {version!r}, this engine reads {FORMAT_VERSION}")
        missing = [key for key in ("channels", "image_size", "classes") if key not in meta]
        missing += [f"{split} file {i}: {key}" for split in SPLITS
                    for i, entry in enumerate(meta["splits"][split]["files"])
                    for key in ("name", "images", "bytes", "crc32") if key not in entry]
        if missing or len(meta["image_size"]) != 2:
            raise ValueError(f"missing {', '.join(missing) or 'a 2-element image_size'}")
    except (OSError, ValueError, KeyError, TypeError, IndexError) as err:
        raise DataError(f"{path}: unreadable or incomplete metadata: {err!r}") from None
    return meta


def open_native(root, num_classes=None):
    """The dataset ``data.prepare`` wrote at ``root``, checked; ``num_classes``, when given,
    must be the metadata's."""
    meta = read_metadata(root)
    height, width = meta["image_size"]
    shape = (meta["channels"], height, width)
    classes = list(meta["classes"])
    if num_classes is not None and num_classes != len(classes):
        raise DataError(f"{root / METADATA}: {len(classes)} classes, but data.num_classes is "
                        f"{num_classes}; remove data.num_classes or set it to {len(classes)}")
    std = meta.get("pixel_std")
    if std is not None and not (isinstance(std, (int, float)) and np.isfinite(std) and std >= 0):
        raise DataError(f"{root / METADATA}: pixel_std is {std!r}, expected a finite number "
                        f">= 0; prepare the dataset again")
    splits = {}
    for split in SPLITS:
        entries = meta["splits"][split]["files"]
        files = [root / e["name"] for e in entries]
        for entry, file in zip(entries, files):
            try:
                size = file.stat().st_size
            except FileNotFoundError:
                raise DataError(f"{file}: batch file is missing") from None
            if size != entry["bytes"]:
                raise DataError(f"{file}: {size} bytes, metadata says {entry['bytes']} "
                                f"(truncated or replaced?)")
        counts = [e["images"] for e in entries]
        label_path = root / labels_name(split)
        labels = check_labels(label_path, load_npy(label_path, "labels"), sum(counts),
                               len(classes))
        splits[split] = Split(split, files, counts, labels, "NCHW",
                              crcs=[e["crc32"] for e in entries])
    mean = check_mean(root / MEAN, load_npy(root / MEAN, "mean image"), shape)
    return Dataset(root, splits["train"], splits["val"], mean, classes,
                   meta.get("source", "unknown"), "NCHW", std)


# -- writing a dataset ----------------------------------------------------------------------
def pixel_stats(images, chunk=4):
    """(per-pixel sum over the batch (C, H, W), sum of squared values) of uint8 images, both
    exact. The squares go through a small reused buffer, ``chunk`` images at a time: a float
    copy of the whole batch would be fresh memory on every call, slow to touch here."""
    flat = images.reshape(len(images), -1)
    squares = np.empty((min(chunk, len(flat)), flat.shape[1]), np.uint16)
    total = 0
    for start in range(0, len(flat), chunk):
        part = flat[start:start + chunk]
        out = squares[:len(part)]
        np.multiply(part, part, out=out, dtype=np.uint16)
        total += int(out.sum(dtype=np.uint64))
    return np.add.reduce(images, axis=0, dtype=np.uint32).astype(np.float64), float(total)


class DatasetWriter:
    """Collects batch files written by ``write_batch`` (possibly in worker processes) and
    finishes the folder: labels, mean image, then metadata.json. While it works the folder
    holds ``.incomplete`` (naming the source and options), so a half-written dataset is never
    mistaken for a whole one, and ``.batches/``: a record per batch file written (entry,
    labels, images skipped), so that an interrupted preparation can go on where it stopped
    (``resume=True`` with the same source and options keeps both; otherwise they are cleared).

        writer = DatasetWriter(out, channels=1, image_size=(28, 28), classes=names,
                               source="fashion-mnist", options={...})
        entry = write_batch(writer.batch_path("train", 0), images)
        writer.add("train", 0, entry, labels, pixel_stats(images))
        writer.finish()
    """

    def __init__(self, root, channels, image_size, classes, source, options=None,
                 class_names=None, resume=False):
        self.root = Path(root)
        self.channels, self.image_size = channels, tuple(image_size)
        self.classes, self.source, self.options = list(classes), source, options or {}
        self.class_names = class_names
        self.entries = {split: {} for split in SPLITS}
        self.pixel_sum = np.zeros((channels,) + self.image_size, np.float64)
        self.square_sum = 0.0
        self.root.mkdir(parents=True, exist_ok=True)
        marker = json.dumps({"source": source, "options": self.options}, sort_keys=True)
        self.resumed = resume and _read_text(self.root / INCOMPLETE) == marker
        (self.root / INCOMPLETE).write_text(marker)
        (self.root / RECORDS).mkdir(exist_ok=True)
        stale = [] if self.resumed else list((self.root / RECORDS).glob("*.json"))
        for split in SPLITS:
            (self.root / split).mkdir(exist_ok=True)
            # an earlier preparation's files, or only the ones it was writing when stopped
            stale += (self.root / split).glob("*.partial.hkl" if self.resumed else "*.hkl")
        for path in stale:
            path.unlink()
        (self.root / METADATA).unlink(missing_ok=True)

    def batch_path(self, split, index):
        return self.root / split / f"{index:04d}.hkl"

    def record_path(self, split, index):
        return self.root / RECORDS / f"{split}-{index:06d}.json"

    def add(self, split, index, entry, labels, stats=None):
        """Record batch ``index`` of ``split`` (its ``write_batch`` entry and labels); the
        training batches' ``pixel_stats`` go into the mean image and the pixel std."""
        name = self.batch_path(split, index).relative_to(self.root).as_posix()
        self.entries[split][index] = (dict(entry, name=name), np.asarray(labels, np.int64))
        if split == "train" and stats is not None:
            self.pixel_sum += stats[0]
            self.square_sum += stats[1]

    def finish(self):
        meta = {"format_version": FORMAT_VERSION, "layout": "NCHW", "channels": self.channels,
                "image_size": list(self.image_size), "classes": self.classes,
                "num_classes": len(self.classes), "source": self.source,
                "options": self.options, "splits": {}}
        for split in SPLITS:
            indices = sorted(self.entries[split])
            if indices != list(range(len(indices))):
                raise RuntimeError(f"{split}: batch files {indices} are not 0..n-1")
            entries = [self.entries[split][i][0] for i in indices]
            labels = np.concatenate([self.entries[split][i][1] for i in indices]) \
                if indices else np.zeros(0, np.int64)
            np.save(self.root / labels_name(split), labels)
            meta["splits"][split] = {"count": int(len(labels)), "files": entries}
        count = max(meta["splits"]["train"]["count"], 1)
        mean = self.pixel_sum / count
        variance = self.square_sum / (count * mean.size) - np.mean(mean ** 2)
        meta["pixel_std"] = float(np.sqrt(max(variance, 0.0)))
        if self.class_names is not None:
            meta["class_names"] = list(self.class_names)
        np.save(self.root / MEAN, mean.astype(np.float32))
        temporary = self.root / (METADATA + ".tmp")
        temporary.write_text(json.dumps(meta, indent=1))
        temporary.replace(self.root / METADATA)
        shutil.rmtree(self.root / RECORDS)
        (self.root / INCOMPLETE).unlink()
        return meta
