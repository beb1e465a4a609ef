"""``python -m data.prepare imagenet``: small ILSVRC-2012 trees in every layout, real JPEGs."""
import io
import json
import tarfile

import numpy as np
import pytest
from PIL import Image

from data import imagenet, prepare
from data.dataset import open_dataset

WNIDS = ["n01440764", "n01443537", "n01484850"]          # sorted: class indices 0, 1, 2
COLOURS = [(200, 40, 40), (40, 200, 40), (40, 40, 200)]
DEVKIT_ORDER = ["n01484850", "n01440764", "n01443537"]   # ILSVRC2012_ID 1, 2, 3
VAL_CLASSES = [2, 0, 1, 1, 0, 2]


def jpeg(colour, size=(40, 30), mode="RGB", fmt="JPEG"):
    image = Image.new("RGB", size, colour)
    image.putpixel((3, 3), (255, 255, 255))
    buffer = io.BytesIO()
    image.convert(mode).save(buffer, fmt, quality=90)
    return buffer.getvalue()


def write_tree(root, labels="val.txt", as_tar=(2,)):
    """train/: a folder per class, or for the classes in ``as_tar`` a tar file as the train
    archive holds (class 0 has a CMYK JPEG, a PNG named .JPEG and a damaged file among its
    images); val/: flat, labelled by ``labels`` (one of the three formats)."""
    train = root / "train"
    train.mkdir(parents=True)
    for c, wnid in enumerate(WNIDS):
        files = {f"{wnid}_{i}.JPEG": jpeg(COLOURS[c]) for i in range(4 + (c == 2))}
        if c == 0:
            files.update({f"{wnid}_cmyk.JPEG": jpeg(COLOURS[0], mode="CMYK"),
                          f"{wnid}_png.JPEG": jpeg(COLOURS[0], fmt="PNG"),
                          f"{wnid}_broken.JPEG": jpeg(COLOURS[0])[:100]})
        if c in as_tar:
            with tarfile.open(train / f"{wnid}.tar", "w") as tar:
                for name, data in files.items():
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        else:
            (train / wnid).mkdir()
            for name, data in files.items():
                (train / wnid / name).write_bytes(data)
    (root / "val").mkdir()
    stems = [f"ILSVRC2012_val_{i:08d}" for i in range(1, len(VAL_CLASSES) + 1)]
    for stem, c in zip(stems, VAL_CLASSES):
        (root / "val" / f"{stem}.JPEG").write_bytes(jpeg(COLOURS[c], size=(30, 50)))
    if labels == "val.txt":
        text = "".join(f"{s}.JPEG {c}\n" for s, c in zip(stems, VAL_CLASSES))
    elif labels == "LOC_val_solution.csv":
        text = "ImageId,PredictionString\n" + "".join(
            f"{s},{WNIDS[c]} 1 2 20 20 {WNIDS[c]} 3 3 9 9\n" for s, c in zip(stems, VAL_CLASSES))
    else:
        text = "".join(f"{DEVKIT_ORDER.index(WNIDS[c]) + 1}\n" for c in VAL_CLASSES)
        (root / "synsets.txt").write_text("".join(f"{w}\n" for w in DEVKIT_ORDER))
    (root / labels).write_text(text)
    (root / "synset_words.txt").write_text("".join(f"{w} fish {i}, a fish\n"
                                                   for i, w in enumerate(WNIDS)))


def nearest_class(image):
    colour = image.reshape(3, -1).mean(axis=1)
    return int(np.argmin([np.abs(colour - c).sum() for c in COLOURS]))


def all_images(split):
    return np.concatenate([split.read(i) for i in range(len(split.counts))])


@pytest.mark.parametrize("labels, as_tar", [(name, (2,)) for name in imagenet.LABEL_FILES] +
                         [("val.txt", ()), ("val.txt", (0, 1, 2))])
def test_every_layout_and_label_file_gives_the_same_dataset(tmp_path, labels, as_tar, capfd):
    write_tree(tmp_path / "src", labels, as_tar)
    argv = ["imagenet", str(tmp_path / "out"), "--source", str(tmp_path / "src"), "--size",
            "16", "--batch-size", "4", "--workers", "2"]
    if labels == imagenet.LABEL_FILES[2]:
        argv += ["--synsets", str(tmp_path / "src" / "synsets.txt")]
    assert prepare.main(argv) == 0
    out, err = capfd.readouterr()
    assert "15 train / 6 val images, 3x16x16, 3 classes; 1 unreadable images skipped" in out
    assert "skipping " in err and f"{WNIDS[0]}_broken.JPEG" in err
    dataset = open_dataset(tmp_path / "out")
    assert dataset.classes == WNIDS
    meta = json.loads((tmp_path / "out" / "metadata.json").read_text())
    assert meta["class_names"] == [f"fish {i}, a fish" for i in range(3)]
    for split in (dataset.train, dataset.val):
        got = [nearest_class(image) for image in all_images(split)]
        assert got == list(split.labels)
    assert list(dataset.val.labels) == VAL_CLASSES          # the file order
    assert sorted(dataset.train.labels) == [0] * 6 + [1] * 4 + [2] * 5


def test_the_devkit_ground_truth_needs_the_synset_order(tmp_path, capfd):
    write_tree(tmp_path / "src", imagenet.LABEL_FILES[2])
    assert prepare.main(["imagenet", str(tmp_path / "out"), "--source",
                         str(tmp_path / "src")]) == 2
    assert "give --synsets FILE, the WNIDs in ID order" in capfd.readouterr().err


def test_a_validation_image_without_a_label_is_named(tmp_path, capfd):
    write_tree(tmp_path / "src")
    (tmp_path / "src" / "val" / "ILSVRC2012_val_00000099.JPEG").write_bytes(jpeg(COLOURS[0]))
    assert prepare.main(["imagenet", str(tmp_path / "out"), "--source",
                         str(tmp_path / "src")]) == 2
    assert "val.txt: no label for 1 validation images (ILSVRC2012_val_00000099.JPEG)" in \
        capfd.readouterr().err


def test_an_interrupted_preparation_goes_on_where_it_stopped(tmp_path, monkeypatch, capfd):
    write_tree(tmp_path / "src")
    argv = ["imagenet", None, "--source", str(tmp_path / "src"), "--size", "16",
            "--batch-size", "2", "--workers", "1"]
    assert prepare.main(argv[:1] + [str(tmp_path / "whole")] + argv[2:]) == 0
    made, make = [], imagenet.ImageNet.make_batch

    def stop_at_the_fifth(self, split, payload):
        if len(made) == 4:
            raise KeyboardInterrupt
        made.append(split)
        return make(self, split, payload)
    monkeypatch.setattr(imagenet.ImageNet, "make_batch", stop_at_the_fifth)
    assert prepare.main(argv[:1] + [str(tmp_path / "cut")] + argv[2:]) == 130
    assert "interrupted; the same command goes on where it stopped" in capfd.readouterr().err
    with pytest.raises(Exception, match="preparation did not finish"):
        open_dataset(tmp_path / "cut")
    made.clear()
    monkeypatch.setattr(imagenet.ImageNet, "make_batch", lambda self, s, p: (made.append(s),
                                                                              make(self, s, p))[1])
    assert prepare.main(argv[:1] + [str(tmp_path / "cut")] + argv[2:]) == 0
    assert "4 of 11 batch files were written before" in capfd.readouterr().err
    assert len(made) == 7                                   # only the other seven were made
    whole, cut = (json.loads((tmp_path / d / "metadata.json").read_text())
                  for d in ("whole", "cut"))
    assert whole["splits"] == cut["splits"] and whole["pixel_std"] == cut["pixel_std"]
    np.testing.assert_array_equal(np.load(tmp_path / "whole" / "img_mean.npy"),
                                  np.load(tmp_path / "cut" / "img_mean.npy"))
    assert not (tmp_path / "cut" / ".batches").exists()
