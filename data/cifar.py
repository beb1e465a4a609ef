"""CIFAR-10 and CIFAR-100 from the official python tarballs (Krizhevsky 2009), the data of the
EASGD paper and of the gossip experiments.

    python -m data.prepare cifar10 OUT --source cifar-10-python.tar.gz
    python -m data.prepare cifar100 OUT --source cifar-100-python.tar.gz [--labels coarse]

``cifar-10-python.tar.gz`` holds ``cifar-10-batches-py/data_batch_1`` ... ``data_batch_5``,
``test_batch`` and ``batches.meta``; ``cifar-100-python.tar.gz`` holds ``cifar-100-python/
train``, ``test`` and ``meta``. Each is a pickled dict (Python 2): ``data``, a uint8 (N, 3072)
array of rows holding the R, G and B planes of a 32x32 image, and the labels (``labels``, or
``fine_labels`` and ``coarse_labels``); the meta files name the classes. The pickles are read
by an unpickler that builds nothing but those containers and NumPy arrays.

A file under the official name must have the official MD5 (a damaged download is named, not
prepared); a file under another name is read as it is. The training images are shuffled once
with ``--seed``; the test batch is ``val``.
"""
import hashlib
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np

from data.source import ArraySource, PrepareError, shuffled_train

HELP = {"cifar10": "CIFAR-10: 50k/10k 32x32 colour images, 10 classes (cifar-10-python.tar.gz)",
        "cifar100": "CIFAR-100: 50k/10k 32x32 colour images, 100 classes "
                    "(cifar-100-python.tar.gz)"}
URL = "https://www.cs.toronto.edu/~kriz/"
DATASETS = {
    "cifar10": {"file": "cifar-10-python.tar.gz", "md5": "c58f30108f718f92721af3b95e74349a",
                "folder": "cifar-10-batches-py",
                "train": [f"data_batch_{i}" for i in range(1, 6)], "val": ["test_batch"],
                "meta": "batches.meta", "names": {"fine": "label_names"},
                "labels": {"fine": "labels"}},
    "cifar100": {"file": "cifar-100-python.tar.gz", "md5": "eb9058c3a382ffc7106e4002c42a8d85",
                 "folder": "cifar-100-python", "train": ["train"], "val": ["test"],
                 "meta": "meta",
                 "names": {"fine": "fine_label_names", "coarse": "coarse_label_names"},
                 "labels": {"fine": "fine_labels", "coarse": "coarse_labels"}},
}
# What the official pickles are made of: NumPy arrays (their reconstructor, ndarray and dtype)
# besides the dicts, lists, strings and numbers pickle builds itself; and the text-to-bytes
# codec through which Python 3 writes bytes at pickle protocol 2 (a re-packed tarball).
_ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}


def add_arguments(parser, name):
    parser.add_argument("--source", dest="tarball", type=Path, required=True, metavar="TAR_GZ",
                        help=f"the python version of the dataset, {DATASETS[name]['file']} "
                             f"from {URL}")
    parser.add_argument("--batch-size", type=int, default=128, help="images per batch file")
    if name == "cifar100":
        parser.add_argument("--labels", choices=("fine", "coarse"), default="fine",
                            help="the 100 fine classes (default) or the 20 superclasses")


class _Unpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not part of a CIFAR batch")
        return super().find_class(module, name)


def _verify(path, spec):
    if path.name != spec["file"]:
        return
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != spec["md5"]:
        raise PrepareError(f"{path}: MD5 {digest.hexdigest()} differs from the official "
                           f"{spec['file']}'s ({spec['md5']}): the download is damaged or "
                           f"incomplete; download it again from {URL}")


def _members(path, spec):
    """{name: unpickled dict} of the tarball's batch and meta files."""
    wanted = spec["train"] + spec["val"] + [spec["meta"]]
    found = {}
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                name = member.name.rsplit("/", 1)[-1]
                if member.isfile() and name in wanted and \
                        member.name.startswith(spec["folder"] + "/"):
                    found[name] = _Unpickler(io.BytesIO(tar.extractfile(member).read()),
                                             encoding="latin1").load()
    except FileNotFoundError:
        raise PrepareError(f"{path}: file not found; download {spec['file']} from {URL}") \
            from None
    except (tarfile.TarError, OSError, EOFError, pickle.UnpicklingError) as err:
        raise PrepareError(f"{path}: not a readable CIFAR python tarball: "
                           f"{type(err).__name__}: {err}") from None
    missing = [f"{spec['folder']}/{name}" for name in wanted if name not in found]
    if missing:
        raise PrepareError(f"{path}: missing {', '.join(missing)}")
    return found


def _split(path, batches, key, classes):
    """(uint8 (N, 3, 32, 32) images, int64 labels) of the named batch dicts."""
    images, labels = [], []
    for name, batch in batches:
        try:
            data = np.asarray(batch["data"], dtype=np.uint8)
            values = np.asarray(batch[key], dtype=np.int64)
        except (KeyError, TypeError, ValueError) as err:
            raise PrepareError(f"{path}: {name} is not a CIFAR batch ({err!r})") from None
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(values) != len(data):
            raise PrepareError(f"{path}: {name} holds data {data.shape} and {len(values)} "
                               f"labels; expected (N, 3072) and N labels")
        if len(values) and not 0 <= values.min() <= values.max() < classes:
            raise PrepareError(f"{path}: {name}: labels outside [0, {classes})")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(values)
    return np.concatenate(images), np.concatenate(labels)


def make_source(name, args):
    if args.batch_size < 1:
        raise PrepareError(f"--batch-size must be at least 1, got {args.batch_size}")
    spec, path = DATASETS[name], Path(args.tarball).expanduser()
    kind = getattr(args, "labels", "fine")
    _verify(path, spec)
    found = _members(path, spec)
    classes = [str(c) for c in found[spec["meta"]][spec["names"][kind]]]
    arrays = {split: _split(path, [(n, found[n]) for n in spec[split]], spec["labels"][kind],
                            len(classes)) for split in ("train", "val")}
    train = shuffled_train(*arrays["train"], args.seed)
    options = {"batch_size": args.batch_size, "seed": args.seed, "labels": kind,
               "file": path.name}
    return ArraySource(name, classes, {"train": train[0], "val": arrays["val"][0]},
                       {"train": train[1], "val": arrays["val"][1]}, args.batch_size, options)
