"""The Theano-MPI layout, read as theano_alexnet's preprocessing scripts left it.

``make_hkl.py`` and ``make_labels.py`` write::

    ROOT/train_hkl_b256_b_128/0000_0.hkl 0000_1.hkl 0001_0.hkl ...   uint8 c01b (3, 256, 256, 128)
    ROOT/train_hkl_b256_b_256/0000.hkl 0001.hkl ...                  uint8 c01b (3, 256, 256, 256)
    ROOT/val_hkl_b256_b_128/ and val_hkl_b256_b_256/                 the same for validation
    ROOT/labels/train_labels.npy, val_labels.npy    one label per source image, in file order
    ROOT/misc/img_mean.npy                          float64 (3, 256, 256), the mean train image

The sorted file names are the image order (``0000_0`` then ``0000_1`` holds batch 0's two
halves). Labels and mean are looked for in ``labels/`` and ``misc/`` and at the top; the
folders may also be plain ``train/`` and ``val/``. Any hickle version's files read (through
h5py, ``format.read_batch``).

- **Folder.** With several ``train_hkl*`` folders, ``data.train_folder`` names the one to use;
  otherwise the one whose files hold 128 images (Theano-MPI's ``file_batch_size``). Its
  validation twin has the same name with ``val`` for ``train``.
- **Labels.** The label files count every source image, but the scripts drop the last partial
  batch (ImageNet: 1,281,167 labels for 1,281,024 images; 50,000 for 49,920), so a longer file
  is cut to the images in the batch files, as Theano-MPI did (``labels[:n_files * file_batch_
  size]``), with a note; a shorter one is an error.
- **Classes.** ``data.num_classes`` if given, else the lines of a synset list in ``misc/``
  (``synset_words.txt``, ``synsets.txt``, ``LOC_synset_mapping.txt``; the first word of each
  line names the class), else the highest label + 1, with a note saying so.
"""
from pathlib import Path

import numpy as np

from data.format import (MEAN, DataError, Dataset, Split, batch_shape, check_labels,
                         check_mean, labels_name, load_npy)

PLACES = ("", "labels", "misc")          # where labels and the mean may be, under the root
SYNSET_LISTS = ("synset_words.txt", "synsets.txt", "LOC_synset_mapping.txt")
FILE_BATCH_SIZE = 128                    # Theano-MPI's file_batch_size
FOLDER_KEY = "data.train_folder"


def is_theano_mpi(root):
    """True where ``root`` holds a training label file in one of the places it may be."""
    return _find(root, labels_name("train")) is not None


def _find(root, name):
    found = [root / place / name for place in PLACES if (root / place / name).is_file()]
    return found[0] if found else None


def _required(root, name, what):
    path = _find(root, name)
    if path is None:
        raise DataError(f"{root}: no {name} ({what}) at the top, in labels/ or in misc/")
    return path


def _split_folders(root, split):
    return sorted(p for p in root.iterdir() if p.is_dir() and (p.name == split or
                                                               p.name.startswith(f"{split}_hkl")))


def _files(folder):
    files = sorted(folder.glob("*.hkl"))
    if not files:
        raise DataError(f"{folder}: no .hkl batch files")
    return files


def _images_per_file(folder):
    shape, _ = batch_shape(_files(folder)[0])
    return shape[-1] if len(shape) == 4 else None


def _train_folder(root, chosen):
    """The training folder: ``chosen`` by name, the only one, or the 128-image one."""
    found = _split_folders(root, "train")
    if chosen is not None:
        if not (root / chosen).is_dir():
            raise DataError(f"{root}: {FOLDER_KEY} names {chosen!r}, which is not a folder here "
                            f"(found {[p.name for p in found] or 'none'})")
        return root / chosen
    if len(found) == 1:
        return found[0]
    sizes = {p: _images_per_file(p) for p in found}
    standard = [p for p in found if sizes[p] == FILE_BATCH_SIZE]
    if len(standard) == 1:
        return standard[0]
    listed = ", ".join(f"{p.name} ({sizes[p]} images per file)" for p in found) or "none"
    raise DataError(f"{root}: expected one folder 'train/' or 'train_hkl*/' of batch files, or "
                    f"one of {FILE_BATCH_SIZE}-image files among several, found {listed}; set "
                    f"{FOLDER_KEY} to the one to use")


def _val_folder(root, train):
    twin = root / ("val" + train.name[len("train"):])
    if twin.is_dir():
        return twin
    raise DataError(f"{root}: no validation folder {twin.name}/ beside {train.name}/ (found "
                    f"{[p.name for p in _split_folders(root, 'val')] or 'none'})")


def _c01b_split(split, folder, image_shape):
    """A Split over ``folder``'s c01b files (labels set later); checks every file's header."""
    files, counts = _files(folder), []
    for file in files:
        shape, dtype = batch_shape(file)
        if dtype != np.uint8 or len(shape) != 4:
            raise DataError(f"{file}: expected a uint8 c01b (C, H, W, B) array, found "
                            f"{dtype} {shape}")
        if image_shape is not None and shape[:3] != image_shape:
            raise DataError(f"{file}: images of shape {shape[:3]}, other files hold "
                            f"{image_shape} (C, H, W)")
        image_shape = shape[:3]
        counts.append(shape[3])
    return Split(split, files, counts, None, "c01b"), image_shape


def _cut_labels(path, labels, count, notes):
    """The first ``count`` labels of a longer file, with a note; a shorter one stays an error
    (``check_labels`` names it)."""
    if labels.ndim == 1 and len(labels) > count:
        notes.append(f"{path}: {len(labels)} labels for {count} images in the batch files; the "
                     f"last {len(labels) - count} (images the preprocessing left out of the "
                     f"batch files) are not used")
        return labels[:count]
    return labels


def _classes(root, labels, num_classes, notes):
    if num_classes is not None:
        return [str(c) for c in range(num_classes)]
    for name in SYNSET_LISTS:
        path = root / "misc" / name
        if path.is_file():
            words = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
            notes.append(f"{len(words)} classes, from {path}")
            return words
    top = max((int(l.max()) for l in labels if l.size), default=0) + 1
    notes.append(f"{top} classes, from the highest label + 1 (no data.num_classes, no synset "
                 f"list in {root / 'misc'}): set data.num_classes if some classes have no "
                 f"image here")
    return [str(c) for c in range(top)]


def open_theano_mpi(root, train_folder=None, num_classes=None):
    """The Theano-MPI tree at ``root`` (see the module docstring), checked."""
    root, notes = Path(root), []
    train = _train_folder(root, train_folder)
    folders = {"train": train, "val": _val_folder(root, train)}
    splits, image_shape = {}, None
    for split, folder in folders.items():
        splits[split], image_shape = _c01b_split(split, folder, image_shape)
    label_paths = {s: _required(root, labels_name(s), "labels") for s in folders}
    raw = {s: load_npy(label_paths[s], "labels") for s in folders}
    raw = {s: _cut_labels(label_paths[s], raw[s], len(splits[s]), notes) for s in folders}
    integral = [l for l in raw.values() if np.issubdtype(l.dtype, np.integer)]
    classes = _classes(root, integral, num_classes, notes)
    for split in folders:
        splits[split].labels = check_labels(label_paths[split], raw[split], len(splits[split]),
                                            len(classes))
    mean_path = _required(root, MEAN, "mean image")
    mean = check_mean(mean_path, load_npy(mean_path, "mean image"), image_shape)
    source = f"Theano-MPI {train.name}/ + {folders['val'].name}/"
    return Dataset(root, splits["train"], splits["val"], mean, classes, source, "c01b",
                   notes=notes)
