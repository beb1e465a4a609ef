"""The Theano-MPI layout as theano_alexnet's make_hkl.py and make_labels.py leave it."""
import io
import shutil

import h5py
import hickle
import numpy as np
import pytest

from data.dataset import open_dataset
from data.format import DataError

SIDE = 8                 # the scripts write 256x256; 8x8 keeps the files small
SOURCE = {"train": 522, "val": 300}     # images listed, a partial last batch of 256 included


def dump_hickle1(array, path):
    """A file in hickle 1.x's layout: a ``data`` dataset and a ``type`` dataset, no
    attributes (what the scripts' hickle wrote in 2015)."""
    with h5py.File(path, "w") as handle:
        handle.create_dataset("data", data=array)
        handle.create_dataset("type", data=[b"ndarray"])


def dump_hickle5(array, path):
    hickle.dump(array, str(path), mode="w")


def write_tree(root, dump=dump_hickle5, classes=7, seed=0, side=SIDE, source=SOURCE):
    """The tree make_hkl.py and make_labels.py write: for each split, batches of 256 images in
    ``{split}_hkl_b256_b_256/NNNN.hkl`` and their halves in ``{split}_hkl_b256_b_128/
    NNNN_0.hkl, NNNN_1.hkl`` (c01b uint8), the images of the partial last batch dropped;
    ``labels/{split}_labels.npy`` with a label for every listed image (int64), and the
    float64 mean of the training batches in ``misc/img_mean.npy``. Returns the images in
    file order and the labels, per split."""
    rng = np.random.default_rng(seed)
    (root / "labels").mkdir(parents=True)
    (root / "misc").mkdir()
    written = {}
    for split, listed in source.items():
        kept = listed // 256 * 256
        images = rng.integers(0, 256, size=(kept, 3, side, side), dtype=np.uint8)
        labels = rng.integers(0, classes, size=listed).astype(np.int64)
        labels[0] = classes - 1
        for size in (256, 128):
            folder = root / f"{split}_hkl_b256_b_{size}"
            folder.mkdir()
            for start in range(0, kept, size):
                batch, half = divmod(start, 256)
                name = f"{batch:04d}.hkl" if size == 256 else f"{batch:04d}_{half // 128}.hkl"
                c01b = np.ascontiguousarray(images[start:start + size].transpose(1, 2, 3, 0))
                dump(c01b, folder / name)
        np.save(root / "labels" / f"{split}_labels.npy", labels)
        written[split] = images, labels
    np.save(root / "misc" / "img_mean.npy", written["train"][0].mean(axis=0))     # float64
    return written


def all_images(split):
    return np.concatenate([split.read(i) for i in range(len(split.counts))])


@pytest.mark.parametrize("dump", [dump_hickle1, dump_hickle5])
def test_the_tree_opens_as_the_scripts_left_it(tmp_path, dump):
    written = write_tree(tmp_path, dump)
    dataset = open_dataset(tmp_path)
    assert dataset.layout == "c01b" and "train_hkl_b256_b_128/" in repr(dataset)
    assert list(dataset.train.counts) == [128] * 4 and list(dataset.val.counts) == [128, 128]
    for name in ("train", "val"):
        images, labels = written[name]
        np.testing.assert_array_equal(all_images(dataset.split(name)), images)
        np.testing.assert_array_equal(dataset.split(name).labels, labels[:len(images)])
    np.testing.assert_allclose(dataset.mean, written["train"][0].mean(axis=0), rtol=1e-6)
    assert dataset.mean.dtype == np.float32 and dataset.num_classes == 7
    notes = "\n".join(dataset.notes)
    assert "train_labels.npy: 522 labels for 512 images in the batch files; the last 10" in notes
    assert "val_labels.npy: 300 labels for 256 images in the batch files; the last 44" in notes
    assert "7 classes, from the highest label + 1" in notes


def test_a_tree_of_the_scripts_full_size_reads_too(tmp_path):
    written = write_tree(tmp_path, dump_hickle1, side=256, source={"train": 266, "val": 257})
    dataset = open_dataset(tmp_path)
    assert dataset.image_size == (256, 256) and dataset.mean.shape == (3, 256, 256)
    assert list(dataset.train.counts) == [128, 128] and len(dataset.val) == 256
    np.testing.assert_array_equal(dataset.train.read(1), written["train"][0][128:])


def test_the_config_key_picks_the_256_image_folders(tmp_path):
    written = write_tree(tmp_path)
    dataset = open_dataset(tmp_path, train_folder="train_hkl_b256_b_256")
    assert list(dataset.train.counts) == [256, 256] and list(dataset.val.counts) == [256]
    assert "val_hkl_b256_b_256/" in repr(dataset)
    np.testing.assert_array_equal(all_images(dataset.train), written["train"][0])
    with pytest.raises(DataError, match="data.train_folder names 'train_hkl_b64'.*found"):
        open_dataset(tmp_path, train_folder="train_hkl_b64")


def test_several_folders_without_a_128_image_one_ask_for_the_key(tmp_path):
    write_tree(tmp_path)
    shutil.rmtree(tmp_path / "train_hkl_b256_b_128")
    shutil.copytree(tmp_path / "train_hkl_b256_b_256", tmp_path / "train_hkl_b512_b_256")
    with pytest.raises(DataError, match=r"train_hkl_b256_b_256 \(256 images per file\), "
                                        r"train_hkl_b512_b_256 \(256 images per file\); set "
                                        r"data.train_folder"):
        open_dataset(tmp_path)


def test_a_label_file_shorter_than_the_images_is_an_error(tmp_path):
    write_tree(tmp_path)
    np.save(tmp_path / "labels" / "val_labels.npy", np.zeros(200, np.int64))
    with pytest.raises(DataError, match=r"labels/val_labels.npy: 200 labels for 256 images"):
        open_dataset(tmp_path)


def test_the_class_count_comes_from_the_config_else_a_synset_list(tmp_path):
    write_tree(tmp_path)
    assert open_dataset(tmp_path, num_classes=1000).num_classes == 1000
    with pytest.raises(DataError, match=r"labels must lie in \[0, 5\), found \[0, 6\]"):
        open_dataset(tmp_path, num_classes=5)
    words = [f"n{i:08d} class {i}" for i in range(10)]
    (tmp_path / "misc" / "synset_words.txt").write_text("\n".join(words) + "\n")
    dataset = open_dataset(tmp_path)
    assert dataset.num_classes == 10 and dataset.classes[3] == "n00000003"
    assert any("10 classes, from" in n and "synset_words.txt" in n for n in dataset.notes)


def test_labels_and_mean_at_the_top_and_plain_split_folders_read_too(tmp_path):
    written = write_tree(tmp_path)
    for split in ("train", "val"):
        (tmp_path / f"{split}_hkl_b256_b_256").rename(tmp_path / split)
        (tmp_path / "labels" / f"{split}_labels.npy").rename(tmp_path / f"{split}_labels.npy")
    (tmp_path / "misc" / "img_mean.npy").rename(tmp_path / "img_mean.npy")
    for split in ("train", "val"):
        for old in (tmp_path / f"{split}_hkl_b256_b_128").iterdir():
            old.unlink()
        (tmp_path / f"{split}_hkl_b256_b_128").rmdir()
    dataset = open_dataset(tmp_path)
    assert list(dataset.train.counts) == [256, 256]
    np.testing.assert_array_equal(all_images(dataset.train), written["train"][0])


def test_a_mean_image_with_a_nan_is_named_when_the_dataset_opens(tmp_path):
    write_tree(tmp_path)
    mean = np.load(tmp_path / "misc" / "img_mean.npy")
    mean[1, 2, 3] = np.nan
    np.save(tmp_path / "misc" / "img_mean.npy", mean)
    with pytest.raises(DataError, match=r"misc/img_mean.npy: the mean image holds 1 values "
                                        r"that are NaN or infinite"):
        open_dataset(tmp_path)


def test_files_of_different_image_shapes_are_refused(tmp_path):
    write_tree(tmp_path)
    odd = np.zeros((3, SIDE, 6, 128), np.uint8)
    hickle.dump(odd, str(tmp_path / "train_hkl_b256_b_128" / "0000_1.hkl"), mode="w")
    with pytest.raises(DataError, match=r"0000_1.hkl: images of shape \(3, 8, 6\)"):
        open_dataset(tmp_path)


def test_a_run_trains_on_the_root_of_the_tree(tmp_path):
    from core.config import load_config
    from engine.train import train
    write_tree(tmp_path / "ilsvrc12")
    out = io.StringIO()
    cfg = load_config(None, ["model=mlp", "batch_size=32", "max_steps=6", "epochs=1",
                             f"data.path={tmp_path / 'ilsvrc12'}", f"log.dir={tmp_path / 'run'}",
                             "log.bar=false", "checkpoint.every_epochs=0", "log.export=false"])
    final = train(cfg, out=out)
    text = out.getvalue()
    assert "Theano-MPI train_hkl_b256_b_128/ + val_hkl_b256_b_128/" in text
    assert "note: " in text and "the last 10" in text
    assert final["top1"] is not None and final["model"].num_params > 0
