"""Fashion-MNIST / MNIST preparation: IDX parsing, finding the files, checksums, download."""
import gzip
import hashlib
import http.server
import threading
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from data import idx
from data.dataset import open_dataset
from data.prepare import main
from data.source import PrepareError

SYSTEM = Path(idx.DATASETS["fashion-mnist"]["system"][0])


def idx_bytes(array):
    header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, ">i4").tobytes()
    return header + np.ascontiguousarray(array, np.uint8).tobytes()


def write_fake_idx(folder, n_train=300, n_val=100, seed=0):
    """The four .gz files of a tiny MNIST-like set whose label is drawn into each image."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split, n in (("train", n_train), ("val", n_val)):
        labels = rng.integers(0, 10, size=n).astype(np.uint8)
        images = rng.integers(0, 30, size=(n, 28, 28)).astype(np.uint8)
        images[np.arange(n), 2 + 2 * labels, :] = 250          # a bright row per class
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels
    for key, name in idx.FILES.items():
        (folder / name).write_bytes(gzip.compress(idx_bytes(arrays[key]), mtime=0))
    return arrays


def md5s(folder):
    return {key: hashlib.md5((folder / name).read_bytes()).hexdigest()
            for key, name in idx.FILES.items()}


def test_read_idx_parses_and_checks_lengths():
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    np.testing.assert_array_equal(idx.read_idx(idx_bytes(array), "f"), array)
    with pytest.raises(PrepareError, match="f: .* truncated"):
        idx.read_idx(idx_bytes(array)[:-1], "f")
    with pytest.raises(PrepareError, match="not an IDX file"):
        idx.read_idx(b"\x1f\x8b\x08\x00", "f")


def test_prepare_from_a_given_folder_keeps_images_with_labels(tmp_path, monkeypatch, capsys):
    arrays = write_fake_idx(tmp_path / "raw")
    monkeypatch.setitem(idx.DATASETS["mnist"], "md5", md5s(tmp_path / "raw"))
    assert main(["mnist", str(tmp_path / "out"), "--source", str(tmp_path / "raw"),
                 "--batch-size", "64", "--workers", "2"]) == 0
    dataset = open_dataset(tmp_path / "out")
    assert (len(dataset.train), len(dataset.val)) == (300, 100)
    assert list(dataset.train.counts) == [64] * 4 + [44]
    images = np.concatenate([dataset.train.read(i) for i in range(5)])[:, 0]
    rows = images.mean(axis=2).argmax(axis=1)
    np.testing.assert_array_equal(rows, 2 + 2 * dataset.train.labels)   # label still matches
    assert sorted(dataset.train.labels) == sorted(arrays["train_labels"])   # shuffled once
    val = np.concatenate([dataset.val.read(i) for i in range(2)])[:, 0]
    np.testing.assert_array_equal(val, arrays["val_images"])            # test set in order
    assert "300 train / 100 val images" in capsys.readouterr().out
    assert main(["mnist", str(tmp_path / "out"), "--source", str(tmp_path / "raw"),
                 "--batch-size", "64"]) == 0
    assert "already prepared" in capsys.readouterr().out


def test_a_checksum_mismatch_is_refused_unless_told(tmp_path, capsys):
    write_fake_idx(tmp_path / "raw")
    assert main(["mnist", str(tmp_path / "out"), "--source", str(tmp_path / "raw")]) == 2
    err = capsys.readouterr().err
    assert "train-images-idx3-ubyte.gz: checksum differs" in err and "--no-verify" in err
    assert main(["mnist", str(tmp_path / "out"), "--source", str(tmp_path / "raw"),
                 "--no-verify"]) == 0


def test_damaged_and_missing_files_are_named(tmp_path, capsys):
    write_fake_idx(tmp_path / "raw")
    (tmp_path / "raw" / idx.FILES["val_labels"]).write_bytes(b"not gzip")
    assert main(["mnist", str(tmp_path / "o"), "--source", str(tmp_path / "raw"),
                 "--no-verify"]) == 2
    assert "t10k-labels-idx1-ubyte.gz: not a readable .gz file" in capsys.readouterr().err
    (tmp_path / "raw" / idx.FILES["val_labels"]).unlink()
    assert main(["mnist", str(tmp_path / "o"), "--source", str(tmp_path / "raw")]) == 2
    assert "missing t10k-labels-idx1-ubyte.gz" in capsys.readouterr().err


def test_without_files_or_network_the_message_says_how_to_get_them(tmp_path, monkeypatch,
                                                                   capsys):
    monkeypatch.setitem(idx.DATASETS["fashion-mnist"], "system", [str(tmp_path / "none")])
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert main(["fashion-mnist", str(tmp_path / "out"), "--no-download"]) == 2
    err = capsys.readouterr().err
    assert "apt-get install dataset-fashion-mnist" in err and "--source DIR" in err
    assert str(tmp_path / "cache") in err


def test_download_from_a_mirror_is_checked_and_cached(tmp_path, monkeypatch, capsys):
    write_fake_idx(tmp_path / "site")
    monkeypatch.setitem(idx.DATASETS["mnist"], "md5", md5s(tmp_path / "site"))
    monkeypatch.setitem(idx.DATASETS["mnist"], "system", [str(tmp_path / "none")])
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "site"))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        assert main(["mnist", str(tmp_path / "out"), "--mirror", url]) == 0
    finally:
        server.shutdown()
    assert md5s(tmp_path / "cache" / "parallel-training" / "mnist") == md5s(tmp_path / "site")
    assert len(open_dataset(tmp_path / "out").train) == 300
    assert "downloading" in capsys.readouterr().err


def test_a_failed_download_is_reported(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(idx.DATASETS["mnist"], "system", [str(tmp_path / "none")])
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert main(["mnist", str(tmp_path / "out"), "--mirror", "http://127.0.0.1:9/"]) == 2
    err = capsys.readouterr().err
    assert "download failed: http://127.0.0.1:9/train-images-idx3-ubyte.gz" in err


@pytest.mark.skipif(not SYSTEM.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_the_system_package_files_pass_the_checksums_and_prepare(tmp_path):
    assert main(["fashion-mnist", str(tmp_path / "fm")]) == 0
    dataset = open_dataset(tmp_path / "fm")
    assert (len(dataset.train), len(dataset.val)) == (60000, 10000)
    assert np.bincount(dataset.train.labels).tolist() == [6000] * 10
    assert dataset.classes[9] == "Ankle boot" and dataset.image_size == (28, 28)
