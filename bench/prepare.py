"""Preparation benchmark: ``python bench/prepare.py [--images 2048] [--rounds 3]``.

1. Throughput: ``data.prepare imagenet`` (one worker process per core) on generated JPEGs of
   ImageNet's usual size (500x375, quality 90, photo-like: smooth shapes plus sensor noise,
   about 50 KB each), in images/s per core, against Pillow alone decoding and resizing the
   same files (open, RGB, shorter side to 256 and the centre square, bilinear) in as many
   processes. Rounds alternate the two; the ratio is ours per core / Pillow's. Target: 0.7.
2. JPEG draft mode (``Image.draft``: the decoder scales by 1/2, 1/4 or 1/8 in the DCT): the
   decode time with and without it, at 500x375 and at larger sizes, and how far the prepared
   256x256 image moves (mean and largest difference in levels of 255), beside the difference
   between bilinear and bicubic resizing of the same image (what "resampling noise" means).
"""
import argparse
import io
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.imagenet import ImageNet                # noqa: E402
from data.prepare import write_dataset           # noqa: E402

SIDE = 256


def photo(rng, width, height):
    """A photo-like RGB image: a few smooth colour fields and edges, plus sensor noise."""
    low = rng.integers(0, 256, size=(height // 40 + 2, width // 40 + 2, 3), dtype=np.uint8)
    image = np.asarray(Image.fromarray(low).resize((width, height), Image.Resampling.BICUBIC),
                       np.float32)
    ys, xs = np.mgrid[:height, :width]
    for _ in range(6):
        cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(20, 150)
        image[(xs - cx) ** 2 + (ys - cy) ** 2 < r * r] = rng.uniform(0, 255, 3)
    image += rng.normal(0, 6, image.shape)
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))


def jpeg_bytes(image):
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def write_tree(root, images, rng):
    """An ILSVRC-2012 tree of ``images`` training JPEGs in 4 classes and a few for val."""
    sizes = []
    for i in range(images):
        folder = root / "train" / f"n{i % 4:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        data = jpeg_bytes(photo(rng, 500, 375))
        (folder / f"n{i % 4:08d}_{i}.JPEG").write_bytes(data)
        sizes.append(len(data))
    (root / "val").mkdir()
    lines = []
    for i in range(1, 9):
        (root / "val" / f"ILSVRC2012_val_{i:08d}.JPEG").write_bytes(
            jpeg_bytes(photo(rng, 500, 375)))
        lines.append(f"ILSVRC2012_val_{i:08d}.JPEG {i % 4}\n")
    (root / "val.txt").write_text("".join(lines))
    return sizes


def _pillow_loop(files):
    for path in files:
        with Image.open(path) as image:
            image = image.convert("RGB")
            w, h = image.size
            s = min(w, h)
            box = ((w - s) / 2, (h - s) / 2, (w + s) / 2, (h + s) / 2)
            np.asarray(image.resize((SIDE, SIDE), Image.Resampling.BILINEAR, box=box))


def pillow_alone(files, workers):
    """Images/s per core of plain Pillow (decode, RGB, shorter side to 256, the centre square)
    in ``workers`` processes, each a loop over its share of the files: the same load on the
    cores as data.prepare's pool, without anything else."""
    shares = [files[w::workers] for w in range(workers)]
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        pool.map(_pillow_loop, [files[:workers]] * workers)        # processes started
        tick = time.perf_counter()
        pool.map(_pillow_loop, shares, chunksize=1)
        return len(files) / (time.perf_counter() - tick) / workers


def ours(root, out, workers):
    """Training images/s per core of data.prepare imagenet over the tree."""
    args = SimpleNamespace(folder=root, val_labels=None, synsets=None, names=None, size=SIDE,
                           batch_size=128, seed=0)
    source = ImageNet("imagenet", args)
    tick = time.perf_counter()
    meta, _ = write_dataset(source, out, workers, progress=False, resume=False)
    images = meta["splits"]["train"]["count"] + meta["splits"]["val"]["count"]
    return images / (time.perf_counter() - tick) / workers


def prepared(data, draft, resample=Image.Resampling.BILINEAR):
    """(decode seconds, the 256x256 result) of one JPEG, with or without draft mode."""
    tick = time.perf_counter()
    with Image.open(io.BytesIO(data)) as image:
        if draft:
            image.draft("RGB", (SIDE, SIDE))
        image = image.convert("RGB")
        image.load()
        decoded = time.perf_counter() - tick
        w, h = image.size
        s = min(w, h)
        box = ((w - s) / 2, (h - s) / 2, (w + s) / 2, (h + s) / 2)
        return decoded, np.asarray(image.resize((SIDE, SIDE), resample, box=box), np.float32)


def draft_report(rng, repeats=5):
    print("\nJPEG draft mode: decode ms without / with, result difference (levels of 255)")
    for width, height in ((500, 375), (1024, 768), (2048, 1536)):
        data = jpeg_bytes(photo(rng, width, height))
        plain = min(prepared(data, False)[0] for _ in range(repeats))
        drafted = min(prepared(data, True)[0] for _ in range(repeats))
        full, reduced = prepared(data, False)[1], prepared(data, True)[1]
        bicubic = prepared(data, False, Image.Resampling.BICUBIC)[1]
        moved, noise = np.abs(full - reduced), np.abs(full - bicubic)
        print(f"  {width}x{height}: {plain * 1e3:.2f} / {drafted * 1e3:.2f} ms "
              f"(x{plain / drafted:.2f}); draft moves the result by mean {moved.mean():.2f}, "
              f"max {moved.max():.0f}; bilinear vs bicubic: mean {noise.mean():.2f}, "
              f"max {noise.max():.0f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=2048, help="training JPEGs generated")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "ilsvrc"
        sizes = write_tree(root, args.images, rng)
        files = sorted(root.glob("train/*/*.JPEG")) + sorted(root.glob("val/*.JPEG"))
        print(f"{len(files)} JPEGs of 500x375, quality 90, {np.mean(sizes) / 1e3:.0f} KB on "
              f"average; {args.workers} worker processes")
        ratios = []
        for r in range(args.rounds):
            alone = pillow_alone(files, args.workers)
            per_core = ours(root, Path(tmp) / f"out{r}", args.workers)
            ratios.append(per_core / alone)
            print(f"round {r + 1}: images/s per core: data.prepare {per_core:.0f}, Pillow "
                  f"alone {alone:.0f}; ratio {ratios[-1]:.3f}")
        print(f"ratio median {statistics.median(ratios):.3f} (target 0.7)")
    draft_report(rng)


if __name__ == "__main__":
    main()
