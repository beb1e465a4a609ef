"""The data a run config names: its splits, opened and checked, and this rank's loaders."""
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from data.format import INCOMPLETE, METADATA, DataError, estimate_pixel_std, open_native
from data.loader import Loader
from data.synthetic import make_splits, mean_image
from data.theano_mpi import is_theano_mpi, open_theano_mpi


@dataclass
class Data:
    """This rank's loaders and what the model needs to know of the input."""
    train: Loader
    val: Loader
    channels: int
    image_size: int          # of the model's input (the crop)
    num_classes: int
    description: str
    notes: list = field(default_factory=list)     # for the user, printed at the start


def open_dataset(path, train_folder=None, num_classes=None):
    """The dataset at ``path``: a folder ``data.prepare`` wrote, or a Theano-MPI tree
    (``data/theano_mpi.py``); ``train_folder`` picks among a tree's folders, ``num_classes``
    overrides its class count (and must match a prepared folder's)."""
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found (prepare one with "
                        f"'python -m data.prepare')")
    if (root / INCOMPLETE).exists():
        raise DataError(f"{root}: preparation did not finish ({INCOMPLETE} is present); run "
                        f"'python -m data.prepare' again, which goes on where it stopped")
    if (root / METADATA).exists():
        return open_native(root, num_classes)
    if is_theano_mpi(root):
        return open_theano_mpi(root, train_folder, num_classes)
    raise DataError(f"{root}: not a prepared dataset (no {METADATA}, and no train_labels.npy "
                    f"of the Theano-MPI layout at the top, in labels/ or in misc/)")


def build_data(cfg, rank=0, size=1, val_shard=None):
    """Open (or generate) the configured dataset and make the train loader of ``rank`` of
    ``size`` and the val loader of shard ``val_shard`` (rank, size; default the same);
    raises ``DataError`` naming the file for a bad dataset."""
    data = cfg["data"]
    notes = []
    if data["dataset"] == "prepared":
        dataset = open_dataset(data["path"], data["train_folder"], data["num_classes"])
        train_split, val_split, mean = dataset.train, dataset.val, dataset.mean
        num_classes, description = dataset.num_classes, repr(dataset)
        pixel_std, notes = dataset.pixel_std, dataset.notes
        for split in (train_split, val_split):
            split.verify = data["verify"]
    else:
        train_split, val_split = make_splits(data["num_train"], data["num_val"],
                                             data["channels"], data["image_size"],
                                             data["num_classes"], data["noise"], seed=cfg["seed"])
        mean, num_classes = mean_image(train_split), data["num_classes"]
        pixel_std = estimate_pixel_std(train_split, mean)
        description = f"synthetic {len(train_split)} train / {len(val_split)} val images"
    height, width = mean.shape[1:]
    crop = data["crop"]
    if crop is None and height != width:
        raise DataError(f"{data['path']}: images are {height}x{width}; the models take square "
                        f"inputs, so set data.crop")
    crop = crop or height
    if crop > min(height, width):
        raise DataError(f"data.crop {crop} is larger than the {height}x{width} images: "
                        f"validation takes an unpadded center crop")
    scale = data["scale"] if data["scale"] is not None else 1.0 / max(pixel_std, 1e-3)
    common = dict(crop=(crop, crop), scale=scale, dtype=np.dtype(cfg["dtype"]),
                  seed=cfg["seed"], prefetch=data["prefetch"])
    # a step's images: ``accumulate`` micro-batches of batch_size, read as one batch
    train = Loader(train_split, mean, cfg["batch_size"] * cfg["accumulate"], train=True,
                   pad=data["pad"], mirror=data["mirror"], rank=rank, size=size, **common)
    val_rank, val_size = val_shard or (rank, size)
    val = Loader(val_split, mean, cfg["batch_size"], train=False, rank=val_rank, size=val_size,
                 **common)
    return Data(train, val, int(mean.shape[0]), crop, num_classes, description, notes)
