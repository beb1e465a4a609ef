"""``python -m data.prepare imagefolder``: image modes, labels, resize geometry, splits, errors."""
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data.dataset import open_dataset
from data.prepare import build_parser, main

ROOT = Path(__file__).resolve().parents[2]


def _solid(mode, size, color):
    return Image.new(mode, size, color)


def _palette(size, color, transparent=False):
    image = Image.new("P", size, 0)
    image.putpalette(list(color) + [0, 0, 0] * 255)
    if transparent:
        image.info["transparency"] = 0
    return image


def _truncated_jpeg():
    buffer = io.BytesIO()
    Image.effect_noise((64, 64), 60).convert("RGB").save(buffer, "JPEG")
    return buffer.getvalue()[:300]


# Per class: (file name, image or raw bytes, the RGB colour the prepared image must have).
# Every image is a single colour, distinct across the tree, so a prepared image's mean colour
# tells which file (and so which class) it came from.
def _mixed_tree():
    cmyk = (200, 0, 200, 0)
    return {
        "ant": [("a0.jpg", _solid("RGB", (40, 30), (220, 40, 40)), (220, 40, 40)),
                ("a1.png", _solid("L", (25, 35), 60), (60, 60, 60)),
                ("a2.png", _solid("RGBA", (30, 30), (0, 0, 200, 128)), (127, 127, 227)),
                ("a3.JPG", _solid("RGB", (200, 120), (240, 160, 20)), (240, 160, 20)),
                ("broken.jpg", _truncated_jpeg(), None),
                ("notes.txt", b"not an image, not counted", None)],
        "bee": [("b0.png", _palette((20, 20), (20, 180, 60)), (20, 180, 60)),
                ("b1.jpg", _solid("CMYK", (24, 24), cmyk),
                 _solid("CMYK", (1, 1), cmyk).convert("RGB").getpixel((0, 0))),
                ("b2.gif", _palette((30, 20), (10, 10, 10), transparent=True), (255, 255, 255)),
                ("b3.bmp", _solid("RGB", (16, 16), (90, 40, 160)), (90, 40, 160))],
        "cow": [("c0.webp", _solid("RGB", (20, 26), (40, 40, 120)), (40, 40, 120)),
                ("c1.png", Image.fromarray(np.full((20, 20), 40000, np.uint16)), (156,) * 3),
                ("c2.png", _solid("LA", (18, 18), (100, 255)), (100, 100, 100)),
                ("c3.jpeg", _solid("RGB", (17, 23), (180, 100, 200)), (180, 100, 200)),
                ("junk.png", b"\x89PNG\r\n\x1a\n garbage", None)],
    }


def _write_tree(folder, tree):
    """Write ``tree`` under ``folder``; returns {colour: class name} of its readable images."""
    colours = {}
    for name, files in tree.items():
        (folder / name).mkdir(parents=True)
        for file, content, colour in files:
            if isinstance(content, bytes):
                (folder / name / file).write_bytes(content)
            else:
                kwargs = {"lossless": True} if file.endswith(".webp") else {}
                content.save(folder / name / file, quality=95, **kwargs)
            if colour is not None:
                colours[tuple(colour)] = name
    return colours


def _run(capsys, *argv):
    code = main(["imagefolder", *map(str, argv)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _identify(images, colours, tolerance=12):
    """The colour (a key of ``colours``) of each uniform image, asserting it is unambiguous."""
    found = []
    for image in images:
        mean = image.reshape(3, -1).mean(axis=1)
        near = [c for c in colours if np.abs(mean - c).max() <= tolerance]
        assert len(near) == 1, (mean, near)
        assert np.abs(image.astype(int) - np.array(near[0])[:, None, None]).max() <= tolerance
        found.append(near[0])
    return found


def _all_images(split):
    return [image for i in range(len(split.files)) for image in split.read(i)]


def test_mixed_modes_are_prepared_with_the_right_labels(tmp_path, capsys):
    colours = _write_tree(tmp_path / "src", _mixed_tree())
    out = tmp_path / "out"
    code, stdout, stderr = _run(capsys, out, "--source", tmp_path / "src", "--size", 16,
                                "--val-fraction", 0.25, "--batch-size", 5, "--workers", 1)
    assert code == 0, stderr
    assert "2 unreadable images skipped" in stdout
    assert "broken.jpg" in stderr and "junk.png" in stderr and "notes.txt" not in stderr
    dataset = open_dataset(out)
    assert dataset.classes == ["ant", "bee", "cow"]
    assert dataset.channels == 3 and dataset.image_size == (16, 16)
    assert all(count <= 5 for split in (dataset.train, dataset.val) for count in split.counts)
    seen = []
    for split in (dataset.train, dataset.val):
        images = _all_images(split)
        assert all(image.shape == (3, 16, 16) and image.dtype == np.uint8 for image in images)
        found = _identify(images, colours)
        assert [dataset.classes[label] for label in split.labels] == \
            [colours[c] for c in found]
        seen += found
    assert sorted(seen) == sorted(colours)      # every readable image exactly once
    # One in four of each class's files went to val (the broken one may have been among them).
    assert 1 <= len(dataset.val) <= 3 and len(dataset.train) >= 9
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["source"] == "imagefolder"
    assert meta["options"]["source"] == str((tmp_path / "src").resolve())
    assert meta["options"]["size"] == 16 and meta["options"]["resize"] == "crop"


def _stripes(vertical):
    """48 x 16: red | white | black | blue bands of 16, 8, 8, 16 columns (rows if not
    ``vertical``)."""
    pixels = np.empty((16, 48, 3), np.uint8)
    pixels[:, :16] = (255, 0, 0)
    pixels[:, 16:24] = (255, 255, 255)
    pixels[:, 24:32] = (0, 0, 0)
    pixels[:, 32:] = (0, 0, 255)
    return Image.fromarray(pixels if vertical else pixels.transpose(1, 0, 2).copy())


@pytest.mark.parametrize("resize", ["crop", "stretch"])
def test_resize_modes_geometry(tmp_path, capsys, resize):
    for name, vertical in (("tall", False), ("wide", True)):
        (tmp_path / "src" / name).mkdir(parents=True)
        _stripes(vertical).save(tmp_path / "src" / name / "x.png")
    out = tmp_path / "out"
    code, _, stderr = _run(capsys, out, "--source", tmp_path / "src", "--size", 16,
                           "--resize", resize, "--val-fraction", 0)
    assert code == 0, stderr
    dataset = open_dataset(out)
    images = _all_images(dataset.train)
    assert len(images) == 2 and len(dataset.val) == 0
    for image, label in zip(images, dataset.train.labels):
        # Bring the tall image to the wide one's orientation: bands along the last axis.
        image = image.astype(int) if dataset.classes[label] == "wide" \
            else image.transpose(0, 2, 1).astype(int)
        if resize == "crop":
            # The center 16 x 16 of 48 x 16, unscaled: white | black, the coloured ends gone.
            assert (image[:, :, :8] == 255).all() and (image[:, :, 8:] == 0).all()
        else:
            # Scaled by 1/3 along the long side: every band kept, in order.
            for column, colour in ((2, (255, 0, 0)), (6, (255, 255, 255)), (9, (0, 0, 0)),
                                   (13, (0, 0, 255))):
                assert np.abs(image[:, :, column] - np.array(colour)[:, None]).max() <= 2


def test_train_and_val_folders_are_used_as_given(tmp_path, capsys):
    train = {"a": [(f"{i}.png", _solid("RGB", (20, 20), (30 * i, 10, 10)), (30 * i, 10, 10))
                   for i in range(3)],
             "b": [(f"{i}.png", _solid("RGB", (20, 20), (10, 30 * i, 10)), (10, 30 * i, 10))
                   for i in range(1, 3)]}
    val = {"a": [("v.png", _solid("RGB", (20, 20), (10, 10, 200)), (10, 10, 200))],
           "b": [(f"v{i}.jpg", _solid("L", (20, 20), 100 + 60 * i), (100 + 60 * i,) * 3)
                 for i in range(2)]}
    train_colours = _write_tree(tmp_path / "src" / "train", train)
    val_colours = _write_tree(tmp_path / "src" / "val", val)
    out = tmp_path / "out"
    code, _, stderr = _run(capsys, out, "--source", tmp_path / "src", "--size", 8,
                           "--val-fraction", 0.5)
    assert code == 0, stderr
    dataset = open_dataset(out)
    assert dataset.classes == ["a", "b"]
    for split, colours in ((dataset.train, train_colours), (dataset.val, val_colours)):
        found = _identify(_all_images(split), colours)
        assert sorted(found) == sorted(colours)
        assert [dataset.classes[label] for label in split.labels] == [colours[c] for c in found]
    assert json.loads((out / "metadata.json").read_text())["options"]["val_fraction"] is None


def test_train_and_val_folders_must_hold_the_same_classes(tmp_path, capsys):
    image = _solid("RGB", (8, 8), (1, 2, 3))
    for split, names in (("train", "ab"), ("val", "ac")):
        for name in names:
            (tmp_path / split / name).mkdir(parents=True)
            image.save(tmp_path / split / name / "x.png")
    code, _, stderr = _run(capsys, tmp_path / "out", "--source", tmp_path)
    assert code == 2
    assert "only in train/: ['b']" in stderr and "only in val/: ['c']" in stderr
    assert not (tmp_path / "out").exists()


def _make_error_case(case, folder):
    image = _solid("RGB", (8, 8), (1, 2, 3))
    if case == "missing":
        return folder / "nowhere"
    folder.mkdir()
    if case == "no classes":
        image.save(folder / "loose.png")
    if case in ("empty class", "one class"):
        (folder / "full").mkdir()
        image.save(folder / "full" / "x.png")
    if case == "empty class":
        (folder / "empty").mkdir()
        (folder / "empty" / "readme.txt").write_text("no images here")
    if case == "train only":
        for name in "ab":
            (folder / "train" / name).mkdir(parents=True)
            image.save(folder / "train" / name / "x.png")
    return folder


@pytest.mark.parametrize("case, message", [
    ("missing", "nowhere: source folder not found"),
    ("no classes", "src: no class folders"),
    ("empty class", "empty: class folder 'empty' holds no images"),
    ("one class", "src: only one class folder ('full')"),
    ("train only", "has a train/ folder but no val/"),
])
def test_unusable_sources_are_reported(tmp_path, capsys, case, message):
    source = _make_error_case(case, tmp_path / "src")
    code, stdout, stderr = _run(capsys, tmp_path / "out", "--source", source)
    assert code == 2 and stdout == ""
    assert stderr.startswith("data.prepare: ") and message in stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("option, value", [("--size", 0), ("--batch-size", 0),
                                           ("--val-fraction", 1.0), ("--val-fraction", -0.1)])
def test_bad_options_are_reported(tmp_path, capsys, option, value):
    source = _make_error_case("empty class", tmp_path / "src")
    code, _, stderr = _run(capsys, tmp_path / "out", "--source", source, option, value)
    assert code == 2 and f"{option} must" in stderr


def test_errors_are_reported_when_run_as_a_module(tmp_path):
    result = subprocess.run([sys.executable, "-m", "data.prepare", "imagefolder",
                             str(tmp_path / "out"), "--source", str(tmp_path / "nowhere")],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "nowhere: source folder not found" in result.stderr


def _two_classes(folder, count=4):
    for c, name in enumerate(("x", "y")):
        (folder / name).mkdir(parents=True)
        for i in range(count):
            _solid("RGB", (12 + i, 10), (100 * c, 20 * i, 50)).save(folder / name / f"{i}.png")


def test_a_second_run_finds_the_dataset_prepared(tmp_path, capsys):
    _two_classes(tmp_path / "src")
    args = [tmp_path / "out", "--source", tmp_path / "src", "--size", 8]
    assert _run(capsys, *args)[0] == 0
    code, stdout, _ = _run(capsys, *args)
    assert code == 0 and "already prepared" in stdout
    # Other options, or other files in the source, make it a different dataset.
    code, _, stderr = _run(capsys, *args, "--resize", "stretch")
    assert code == 2 and "--force" in stderr
    _solid("RGB", (9, 9), (9, 9, 9)).save(tmp_path / "src" / "x" / "new.png")
    code, _, stderr = _run(capsys, *args)
    assert code == 2 and "--force" in stderr
    code, stdout, _ = _run(capsys, *args, "--size", 12, "--force")
    assert code == 0 and "8 train / 1 val images, 3x12x12" in stdout
    assert open_dataset(tmp_path / "out").image_size == (12, 12)


def test_one_and_two_workers_write_identical_files(tmp_path, capsys):
    _two_classes(tmp_path / "src", count=7)
    outputs = []
    for workers in (1, 2):
        out = tmp_path / f"out{workers}"
        code, _, stderr = _run(capsys, out, "--source", tmp_path / "src", "--size", 10,
                               "--batch-size", 3, "--workers", workers)
        assert code == 0, stderr
        outputs.append({p.relative_to(out).as_posix(): p.read_bytes()
                        for p in sorted(out.rglob("*")) if p.is_file()})
    assert len([name for name in outputs[0] if name.endswith(".hkl")]) == 5
    assert outputs[0] == outputs[1]


def test_the_seed_fixes_the_split_and_the_order(tmp_path):
    _two_classes(tmp_path / "src", count=10)
    from data.imagefolder import make_source

    def jobs(seed):
        args = build_parser().parse_args(["imagefolder", str(tmp_path / "out"), "--source",
                                          str(tmp_path / "src"), "--seed", str(seed),
                                          "--val-fraction", "0.2", "--batch-size", "4"])
        return make_source("imagefolder", args).jobs()

    first, again, other = jobs(0), jobs(0), jobs(1)
    assert first == again and first != other
    assert [len(batch) for batch in first["train"]] == [4, 4, 4, 4] and \
        [len(batch) for batch in first["val"]] == [4]
    val_labels = sorted(label for batch in first["val"] for _, label in batch)
    assert val_labels == [0, 0, 1, 1]       # 0.2 of each class
    everything = sorted(item for split in first.values() for batch in split for item in batch)
    assert everything == sorted(item for split in other.values() for batch in split
                                for item in batch)
