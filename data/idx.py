"""Fashion-MNIST and MNIST from their IDX ``.gz`` files (LeCun et al. 1998; Xiao et al. 2017).

The four files are looked for, in order, in ``--source DIR`` (only there when given), in the
folder a system package installs them to (Debian's ``dataset-fashion-mnist``:
``/usr/share/datasets/fashion-mnist``), in the download cache, and finally downloaded from the
official location into the cache. Each file must match the published MD5 of the ``.gz`` file,
or the SHA-256 of its decompressed content (Debian recompresses the files), unless
``--no-verify``. The training images are shuffled once with ``--seed``; the test set is ``val``.
"""
import gzip
import hashlib
import os
import shutil
import sys
import urllib.request
from pathlib import Path

import numpy as np

from data.source import ArraySource, PrepareError, shuffled_train

HELP = {"fashion-mnist": "Fashion-MNIST: 60k/10k 28x28 grayscale clothing images, 10 classes",
        "mnist": "MNIST: 60k/10k 28x28 grayscale handwritten digits, 10 classes"}

FILES = {"train_images": "train-images-idx3-ubyte.gz", "train_labels": "train-labels-idx1-ubyte.gz",
         "val_images": "t10k-images-idx3-ubyte.gz", "val_labels": "t10k-labels-idx1-ubyte.gz"}

DATASETS = {
    "fashion-mnist": {
        "urls": ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
                 "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/"
                 "data/fashion/"],
        "system": ["/usr/share/datasets/fashion-mnist"],
        "package": "dataset-fashion-mnist",
        "classes": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                    "Sneaker", "Bag", "Ankle boot"],
        "md5": {"train_images": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                "train_labels": "25c81989df183df01b3e8a0aad5dffbe",
                "val_images": "bef4ecab320f06d8554ea6380940ec79",
                "val_labels": "bb300cfdad3c16e7a12a480ee83cd310"},
        "content_sha256": {
            "train_images": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            "train_labels": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            "val_images": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            "val_labels": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"},
    },
    "mnist": {
        "urls": ["https://ossci-datasets.s3.amazonaws.com/mnist/",
                 "http://yann.lecun.com/exdb/mnist/"],
        "system": ["/usr/share/datasets/mnist"],
        "package": None,
        "classes": [str(d) for d in range(10)],
        "md5": {"train_images": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
                "train_labels": "d53e105ee54ea40749a09fcbcd1e9432",
                "val_images": "9fb629c4189551a2d022fa330f9573f3",
                "val_labels": "ec29112dd5afa0611ce80d1b7f02629c"},
        "content_sha256": {},
    },
}


def cache_dir(name):
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "parallel-training" / name


def add_arguments(parser, name):
    parser.add_argument("--source", dest="folder", type=Path, default=None,
                        help="folder holding the four IDX .gz files (default: the system "
                             "package's folder, then the download cache, then download)")
    parser.add_argument("--batch-size", type=int, default=128, help="images per batch file")
    parser.add_argument("--no-verify", action="store_true",
                        help="accept files whose checksums differ from the official ones")
    parser.add_argument("--no-download", action="store_true",
                        help="never download; fail if the files are not on disk")
    parser.add_argument("--mirror", default=None,
                        help="download from this base URL instead of the official ones")


def read_idx(data, path):
    """The array in an IDX file's bytes: magic 0x0000 <dtype 0x08 = uint8> <ndim>, big-endian
    int32 dims, then the values."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08 or not 1 <= data[3] <= 4:
        raise PrepareError(f"{path}: not an IDX file of unsigned bytes (magic {data[:4].hex()})")
    ndim = data[3]
    dims = tuple(int(d) for d in np.frombuffer(data, ">i4", count=ndim, offset=4))
    start, size = 4 + 4 * ndim, int(np.prod(dims))
    if len(data) != start + size:
        raise PrepareError(f"{path}: {len(data) - start} bytes of values for dimensions {dims} "
                           f"({size} expected); the file is truncated or damaged")
    return np.frombuffer(data, np.uint8, offset=start).reshape(dims)


def _check(path, key, spec, verify):
    """The decompressed bytes of ``path``, checked against the published checksums."""
    raw = path.read_bytes()
    try:
        data = gzip.decompress(raw)
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        raise PrepareError(f"{path}: not a readable .gz file ({err})") from None
    if verify and hashlib.md5(raw, usedforsecurity=False).hexdigest() != spec["md5"][key] \
            and hashlib.sha256(data).hexdigest() != spec["content_sha256"].get(key):
        raise PrepareError(f"{path}: checksum differs from the official file (expected .gz MD5 "
                           f"{spec['md5'][key]}); re-download it, or pass --no-verify to use "
                           f"it anyway")
    return data


def _download(urls, folder):
    folder.mkdir(parents=True, exist_ok=True)
    for name in FILES.values():
        target = folder / name
        if target.exists():
            continue
        errors = []
        for base in urls:
            url = base.rstrip("/") + "/" + name
            partial = target.with_suffix(".part")
            try:
                print(f"downloading {url}", file=sys.stderr)
                with urllib.request.urlopen(url, timeout=30) as response, \
                        open(partial, "wb") as f:
                    shutil.copyfileobj(response, f)
                partial.replace(target)
                break
            except OSError as err:
                partial.unlink(missing_ok=True)
                errors.append(f"{url}: {err}")
        else:
            return errors
    return []


def locate(name, args):
    """The folder holding all four files, downloading them into the cache if needed."""
    spec = DATASETS[name]
    has_all = lambda folder: all((Path(folder) / f).is_file() for f in FILES.values())  # noqa
    if args.folder is not None:
        if not has_all(args.folder):
            missing = [f for f in FILES.values() if not (args.folder / f).is_file()]
            raise PrepareError(f"{args.folder}: missing {', '.join(missing)}")
        return args.folder
    candidates = [Path(p) for p in spec["system"]] + [cache_dir(name)]
    for folder in candidates:
        if has_all(folder):
            return folder
    errors = []
    if not args.no_download:
        urls = [args.mirror] if args.mirror else spec["urls"]
        errors = _download(urls, cache_dir(name))
        if not errors:
            return cache_dir(name)
    how = [f"pass --source DIR with the four files ({', '.join(FILES.values())})",
           f"download them from {spec['urls'][0]} into {cache_dir(name)}"]
    if spec["package"]:
        how.insert(0, f"install Debian's package ({'sudo ' if os.geteuid() else ''}apt-get "
                      f"install {spec['package']}, which puts them in {spec['system'][0]})")
    tried = "; ".join(str(c) for c in candidates)
    failed = ("; download failed: " + " | ".join(errors)) if errors else ""
    raise PrepareError(f"{name} files not found (looked in {tried}){failed}. To get them: "
                       + "; or ".join(how))


def idx_source(name, folder, batch_size, seed, verify):
    """The four IDX files in ``folder`` as a ``data.prepare`` source (one channel)."""
    spec = DATASETS[name]
    arrays = {key: read_idx(_check(folder / f, key, spec, verify), folder / f)
              for key, f in FILES.items()}
    for split in ("train", "val"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise PrepareError(f"{folder}: {split} images {images.shape} and labels "
                               f"{labels.shape} do not match")
        if labels.max() >= len(spec["classes"]):
            raise PrepareError(f"{folder / FILES[f'{split}_labels']}: label {labels.max()} out "
                               f"of range for {len(spec['classes'])} classes")
    images, labels = shuffled_train(arrays["train_images"][:, None], arrays["train_labels"],
                                    seed)
    return ArraySource(name, spec["classes"],
                       {"train": images, "val": arrays["val_images"][:, None]},
                       {"train": labels, "val": arrays["val_labels"]}, batch_size,
                       {"batch_size": batch_size, "seed": seed})


def make_source(name, args):
    if args.batch_size < 1:
        raise PrepareError(f"--batch-size must be at least 1, got {args.batch_size}")
    folder = locate(name, args)
    return idx_source(name, Path(folder), args.batch_size, args.seed, not args.no_verify)
