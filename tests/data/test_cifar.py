"""``python -m data.prepare cifar10 / cifar100`` on tarballs in the official format."""
import io
import json
import pickle
import tarfile

import numpy as np
import pytest

from data import prepare
from data.dataset import open_dataset


def add(tar, name, obj):
    data = pickle.dumps(obj, protocol=2)           # the official files are Python 2 pickles
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def batch(rng, start, n, classes, keys):
    """n images whose first pixel is their number (start, start + 1, ...) and labels."""
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    data[:, 0] = np.arange(start, start + n)
    return dict({"batch_label": "training batch", "data": data},
                **{key: [int(v) for v in rng.integers(0, c, n)] for key, c in zip(keys, classes)})


def write_cifar10(path, per_batch=12):
    rng = np.random.default_rng(0)
    with tarfile.open(path, "w:gz") as tar:
        for i in range(1, 6):
            add(tar, f"cifar-10-batches-py/data_batch_{i}",
                batch(rng, (i - 1) * per_batch, per_batch, [10], ["labels"]))
        add(tar, "cifar-10-batches-py/test_batch", batch(rng, 200, 10, [10], ["labels"]))
        add(tar, "cifar-10-batches-py/batches.meta",
            {"label_names": [f"class{i}" for i in range(10)], "num_vis": 3072})


def write_cifar100(path):
    rng = np.random.default_rng(1)
    with tarfile.open(path, "w:gz") as tar:
        add(tar, "cifar-100-python/train", batch(rng, 0, 30, [100, 20],
                                                 ["fine_labels", "coarse_labels"]))
        add(tar, "cifar-100-python/test", batch(rng, 100, 10, [100, 20],
                                                ["fine_labels", "coarse_labels"]))
        add(tar, "cifar-100-python/meta", {"fine_label_names": [f"f{i}" for i in range(100)],
                                           "coarse_label_names": [f"c{i}" for i in range(20)]})


def unpickled(path, member):
    with tarfile.open(path) as tar:
        return pickle.load(tar.extractfile(member), encoding="latin1")


def test_cifar10_reads_the_python_tarball(tmp_path, capfd):
    write_cifar10(tmp_path / "c10.tar.gz")
    assert prepare.main(["cifar10", str(tmp_path / "out"), "--source",
                         str(tmp_path / "c10.tar.gz"), "--batch-size", "16"]) == 0
    assert "60 train / 10 val images, 3x32x32, 10 classes" in capfd.readouterr().out
    dataset = open_dataset(tmp_path / "out")
    assert dataset.classes == [f"class{i}" for i in range(10)]
    train = np.concatenate([dataset.train.read(i) for i in range(len(dataset.train.counts))])
    numbers = train[:, 0, 0, 0].astype(int)
    assert sorted(numbers) == list(range(60)) and list(numbers) != list(range(60))   # shuffled
    originals = {}
    for i in range(1, 6):
        entry = unpickled(tmp_path / "c10.tar.gz", f"cifar-10-batches-py/data_batch_{i}")
        for row, label in zip(entry["data"], entry["labels"]):
            originals[int(row[0])] = row, label
    for image, label in zip(train, dataset.train.labels):
        row, expected = originals[int(image[0, 0, 0])]
        assert label == expected
        np.testing.assert_array_equal(image[1], row[1024:2048].reshape(32, 32))  # G plane
    val = dataset.val.read(0)
    assert list(val[:, 0, 0, 0]) == list(range(200, 210))                        # in order


def test_cifar100_fine_or_coarse_labels(tmp_path):
    write_cifar100(tmp_path / "c100.tgz")
    for kind, classes in (("fine", 100), ("coarse", 20)):
        out = tmp_path / kind
        assert prepare.main(["cifar100", str(out), "--source", str(tmp_path / "c100.tgz"),
                             "--labels", kind]) == 0
        dataset = open_dataset(out)
        assert dataset.num_classes == classes and len(dataset.train) == 30
        test = unpickled(tmp_path / "c100.tgz", "cifar-100-python/test")
        assert list(dataset.val.labels) == test[f"{kind}_labels"]
        assert json.loads((out / "metadata.json").read_text())["options"]["labels"] == kind


def test_a_file_under_the_official_name_must_have_the_official_md5(tmp_path, capfd):
    write_cifar10(tmp_path / "cifar-10-python.tar.gz")
    assert prepare.main(["cifar10", str(tmp_path / "out"), "--source",
                         str(tmp_path / "cifar-10-python.tar.gz")]) == 2
    err = capfd.readouterr().err
    assert "cifar-10-python.tar.gz: MD5" in err and "c58f30108f718f92721af3b95e74349a" in err


@pytest.mark.parametrize("damage, message", [
    (lambda p: p.write_bytes(p.read_bytes()[:300]), "not a readable CIFAR python tarball"),
    (lambda p: p.write_bytes(b"not a tarball"), "not a readable CIFAR python tarball"),
])
def test_a_damaged_tarball_is_named(tmp_path, capfd, damage, message):
    path = tmp_path / "c10.tar.gz"
    write_cifar10(path)
    damage(path)
    assert prepare.main(["cifar10", str(tmp_path / "out"), "--source", str(path)]) == 2
    assert f"{path}: {message}" in capfd.readouterr().err


def test_a_pickle_that_would_run_code_is_refused(tmp_path, capfd):
    path = tmp_path / "evil.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
        data = b"cos\nsystem\n(S'echo hi'\ntR."
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    assert prepare.main(["cifar10", str(tmp_path / "out"), "--source", str(path)]) == 2
    assert "os.system is not part of a CIFAR batch" in capfd.readouterr().err
