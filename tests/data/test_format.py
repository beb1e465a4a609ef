"""The dataset format: native round trip, the legacy Theano-MPI layout, and damaged files."""
import json

import hickle
import numpy as np
import pytest

from data.format import (DataError, DatasetWriter, open_dataset, pixel_stats, read_batch,
                         write_batch)


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


def write_legacy(root, files=3, batch=4, shape=(3, 8, 8), classes=5, seed=0):
    """Theano-MPI's layout: c01b files in train_hkl_b256_b_128/ and val_hkl_b256_b_128/."""
    rng = np.random.default_rng(seed)
    written = {}
    for split, count in (("train", files), ("val", 1)):
        folder = root / f"{split}_hkl_b256_b_128"
        folder.mkdir(parents=True)
        images = rng.integers(0, 256, size=(count * batch,) + shape, dtype=np.uint8)
        for i in range(count):
            c01b = np.ascontiguousarray(images[i * batch:(i + 1) * batch].transpose(1, 2, 3, 0))
            hickle.dump(c01b, str(folder / f"{i:04d}.hkl"), mode="w")
        labels = rng.integers(0, classes, size=count * batch)
        labels[0] = classes - 1
        np.save(root / f"{split}_labels.npy", labels)
        written[split] = images, labels
    np.save(root / "img_mean.npy", written["train"][0].mean(axis=0).astype(np.float32))
    return written


def test_legacy_theano_mpi_layout_reads_without_conversion(tmp_path):
    written = write_legacy(tmp_path)
    dataset = open_dataset(tmp_path)
    assert dataset.layout == "c01b" and dataset.num_classes == 5
    assert dataset.image_size == (8, 8) and list(dataset.train.counts) == [4, 4, 4]
    got = np.concatenate([dataset.train.read(i) for i in range(3)])
    np.testing.assert_array_equal(got, written["train"][0])
    np.testing.assert_array_equal(dataset.val.labels, written["val"][1])


def test_legacy_batches_train_through_the_loader(tmp_path):
    from data.loader import Loader
    written = write_legacy(tmp_path)
    dataset = open_dataset(tmp_path)
    loader = Loader(dataset.val, dataset.mean, 4, train=False, prefetch=0)
    (x, y), = list(loader.epoch(0))
    np.testing.assert_allclose(x, written["val"][0] - dataset.mean, rtol=1e-6)
    np.testing.assert_array_equal(y, written["val"][1])


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


def test_legacy_files_of_different_image_shapes_are_refused(tmp_path):
    write_legacy(tmp_path)
    odd = np.zeros((3, 8, 6, 4), np.uint8)
    hickle.dump(odd, str(tmp_path / "train_hkl_b256_b_128" / "0001.hkl"), mode="w")
    with pytest.raises(DataError, match=r"0001.hkl: images of shape \(3, 8, 6\)"):
        open_dataset(tmp_path)


def test_a_folder_that_is_no_dataset(tmp_path):
    with pytest.raises(DataError, match="not a prepared dataset"):
        open_dataset(tmp_path)
    with pytest.raises(DataError, match="dataset folder not found"):
        open_dataset(tmp_path / "nothing")
