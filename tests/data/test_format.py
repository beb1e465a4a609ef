"""The dataset format: native round trip and damaged files (Theano-MPI's: test_theano_mpi.py)."""
import json

import numpy as np
import pytest

from data.dataset import open_dataset
from data.format import DataError, DatasetWriter, pixel_stats, read_batch, write_batch


def write_native(root, train_sizes=(5, 5, 3), val_sizes=(4,), shape=(3, 6, 7), classes=4,
                 seed=0):
    """A small native dataset; returns the images and labels written, per split."""
    rng = np.random.default_rng(seed)
    writer = DatasetWriter(root, shape[0], shape[1:], [f"c{i}" for i in range(classes)],
                           "test", {"seed": seed})
    written = {}
    for split, sizes in (("train", train_sizes), ("val", val_sizes)):
        images = rng.integers(0, 256, size=(sum(sizes),) + shape, dtype=np.uint8)
        labels = rng.integers(0, classes, size=sum(sizes))
        start = 0
        for i, n in enumerate(sizes):
            batch = images[start:start + n]
            entry = write_batch(writer.batch_path(split, i), batch)
            writer.add(split, i, entry, labels[start:start + n], pixel_stats(batch))
            start += n
        written[split] = images, labels
    writer.finish()
    return written


def test_native_round_trip(tmp_path):
    written = write_native(tmp_path)
    dataset = open_dataset(tmp_path)
    assert dataset.channels == 3 and dataset.image_size == (6, 7) and dataset.num_classes == 4
    for split in ("train", "val"):
        images, labels = written[split]
        got = np.concatenate([dataset.split(split).read(i)
                              for i in range(len(dataset.split(split).counts))])
        np.testing.assert_array_equal(got, images)
        np.testing.assert_array_equal(dataset.split(split).labels, labels)
    train = written["train"][0].astype(np.float64)
    np.testing.assert_allclose(dataset.mean, train.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(dataset.pixel_std, (train - train.mean(axis=0)).std(), rtol=1e-4)
    meta = json.loads((tmp_path / "metadata.json").read_text())
    assert meta["layout"] == "NCHW" and meta["source"] == "test"
    assert meta["splits"]["train"]["count"] == 13
    assert not (tmp_path / ".incomplete").exists()


def test_read_into_a_reused_buffer(tmp_path):
    write_native(tmp_path, train_sizes=(5, 3))
    split = open_dataset(tmp_path).train
    buffer = np.empty((5, 3, 6, 7), np.uint8)
    last = split.read(1, buffer)
    assert last.shape == (3, 3, 6, 7) and np.shares_memory(last, buffer)


# -- damaged datasets: the error names the file and the problem -------------------------------
def damage_truncate(root):
    path = root / "train" / "0001.hkl"
    path.write_bytes(path.read_bytes()[:300])
    return "train/0001.hkl", "bytes, metadata says"


def damage_remove(root):
    (root / "val" / "0000.hkl").unlink()
    return "val/0000.hkl", "missing"


def damage_labels_length(root):
    np.save(root / "train_labels.npy", np.zeros(12, np.int64))
    return "train_labels.npy", "12 labels for 13 images"


def damage_labels_range(root):
    np.save(root / "val_labels.npy", np.full(4, 9))
    return "val_labels.npy", r"labels must lie in \[0, 4\)"


def damage_mean_shape(root):
    np.save(root / "img_mean.npy", np.zeros((3, 7, 6), np.float32))
    return "img_mean.npy", r"shape \(3, 7, 6\), expected \(3, 6, 7\)"


def damage_metadata(root):
    (root / "metadata.json").write_text('{"format_version": 1, "splits": ')
    return "metadata.json", "unreadable or incomplete metadata"


def damage_unfinished(root):
    (root / ".incomplete").touch()
    return str(root.name), "preparation did not finish"


def damage_labels_file(root):
    (root / "train_labels.npy").write_bytes(b"\x93NUMPY garbage")
    return "train_labels.npy", "cannot read labels"


@pytest.mark.parametrize("damage", [damage_truncate, damage_remove, damage_labels_length,
                                    damage_labels_range, damage_mean_shape, damage_metadata,
                                    damage_unfinished, damage_labels_file])
def test_damaged_datasets_are_refused_when_opened(tmp_path, damage):
    root = tmp_path / "ds"
    write_native(root)
    name, problem = damage(root)
    with pytest.raises(DataError, match=problem) as info:
        open_dataset(root)
    assert name in str(info.value)


def test_corrupted_bytes_are_caught_by_the_checksum_on_read(tmp_path):
    write_native(tmp_path)
    path = tmp_path / "train" / "0000.hkl"
    data = bytearray(path.read_bytes())
    batch = read_batch(path)
    offset = bytes(data).find(batch.tobytes()[:64])       # where the pixels are stored
    data[offset + 10] ^= 0xFF
    path.write_bytes(bytes(data))
    split = open_dataset(tmp_path).train                  # same size: opens fine
    with pytest.raises(DataError, match="0000.hkl: checksum mismatch"):
        split.read(0)
    split.verify = False
    assert split.read(0).shape == (5, 3, 6, 7)


def test_a_file_that_is_not_a_batch_is_named(tmp_path):
    path = tmp_path / "x.hkl"
    path.write_bytes(b"this is not HDF5")
    with pytest.raises(DataError, match="x.hkl: cannot read batch file"):
        read_batch(path)


def test_a_folder_that_is_no_dataset(tmp_path):
    with pytest.raises(DataError, match="not a prepared dataset"):
        open_dataset(tmp_path)
    with pytest.raises(DataError, match="dataset folder not found"):
        open_dataset(tmp_path / "nothing")


def test_a_mean_or_pixel_std_that_is_not_finite_is_named_when_the_dataset_opens(tmp_path):
    write_native(tmp_path)
    mean = np.load(tmp_path / "img_mean.npy")
    np.save(tmp_path / "img_mean.npy", np.where(mean > 128, np.inf, mean))
    with pytest.raises(DataError, match=r"img_mean.npy: the mean image holds \d+ values that "
                                        r"are NaN or infinite"):
        open_dataset(tmp_path)
    np.save(tmp_path / "img_mean.npy", mean)
    meta = json.loads((tmp_path / "metadata.json").read_text())
    (tmp_path / "metadata.json").write_text(json.dumps(dict(meta, pixel_std=float("nan"))))
    with pytest.raises(DataError, match=r"metadata.json: pixel_std is nan, expected a finite"):
        open_dataset(tmp_path)


def test_a_class_count_in_the_config_must_be_the_dataset_s(tmp_path):
    write_native(tmp_path)
    assert open_dataset(tmp_path, num_classes=4).num_classes == 4
    with pytest.raises(DataError, match=r"metadata.json: 4 classes, but data.num_classes is 5"):
        open_dataset(tmp_path, num_classes=5)
