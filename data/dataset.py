"""The data a run config names: its splits, opened and checked, and this rank's loaders."""
from dataclasses import dataclass

import numpy as np

from data.format import DataError, estimate_pixel_std, open_dataset
from data.loader import Loader
from data.synthetic import make_splits, mean_image


@dataclass
class Data:
    """This rank's loaders and what the model needs to know of the input."""
    train: Loader
    val: Loader
    channels: int
    image_size: int          # of the model's input (the crop)
    num_classes: int
    description: str


def build_data(cfg, rank=0, size=1, val_shard=None):
    """Open (or generate) the configured dataset and make the train loader of ``rank`` of
    ``size`` and the val loader of shard ``val_shard`` (rank, size; default the same);
    raises ``DataError`` naming the file for a bad dataset."""
    data = cfg["data"]
    if data["dataset"] == "prepared":
        dataset = open_dataset(data["path"])
        train_split, val_split, mean = dataset.train, dataset.val, dataset.mean
        num_classes, description = dataset.num_classes, repr(dataset)
        pixel_std = dataset.pixel_std
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
    train = Loader(train_split, mean, cfg["batch_size"], train=True, pad=data["pad"],
                   mirror=data["mirror"], rank=rank, size=size, **common)
    val_rank, val_size = val_shard or (rank, size)
    val = Loader(val_split, mean, cfg["batch_size"], train=False, rank=val_rank, size=val_size,
                 **common)
    return Data(train, val, int(mean.shape[0]), crop, num_classes, description)
