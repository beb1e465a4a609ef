"""``python -m data.prepare SOURCE OUT [options]``: raw images -> a prepared dataset folder.

Sources: ``imagefolder`` (a folder per class of JPEG/PNG images), ``imagenet`` (ILSVRC-2012 as
downloaded), ``fashion-mnist`` and ``mnist`` (the IDX ``.gz`` files), ``cifar10`` and
``cifar100`` (the python tarballs), ``synthetic`` (ImageNet-shaped random batches). The batch
files are produced by a pool of worker processes, one per core, with a progress bar (and its
ETA). A folder already prepared from the same source with the same options is left as it is
(``--force`` rebuilds it); an interrupted preparation goes on where it stopped when the same
command runs again (the batch files already written are read back and checked, not made
again). See ``data/format.py`` for what is written.
"""
import argparse
import importlib
import json
import multiprocessing
import os
import sys
import zlib
from pathlib import Path

import numpy as np
from tqdm import tqdm

from data.format import (METADATA, DataError, DatasetWriter, pixel_stats, read_batch,
                         read_metadata, write_batch)
from data.source import PrepareError

# The source behind the jobs that worker processes run: set in the parent before the pool
# forks, so workers inherit it instead of receiving large arrays through pipes.
_SOURCE = None


def _work(job):
    split, index, path, record, payload = job
    done = _done_before(split, path, record)
    if done is not None:
        return (split, index) + done
    images, labels, skipped = _SOURCE.make_batch(split, payload)
    entry = write_batch(path, images) if len(images) else None
    record.write_text(json.dumps({"entry": entry, "labels": labels.tolist(),
                                  "skipped": skipped}))
    stats = pixel_stats(images) if split == "train" and len(images) else None
    return split, index, entry, labels, stats, skipped


def _done_before(split, path, record):
    """(entry, labels, stats, skipped) of a batch file an interrupted preparation wrote, read
    back and checked against its record; None where it must be made (again)."""
    if not record.exists():
        return None
    try:
        done = json.loads(record.read_text())
        entry, labels = done["entry"], np.asarray(done["labels"], np.int64)
        stats = None
        if entry is not None:
            images = read_batch(path)
            if len(images) != entry["images"] or zlib.crc32(images.data) != entry["crc32"]:
                return None
            stats = pixel_stats(images) if split == "train" else None
        return entry, labels, stats, done["skipped"]
    except (OSError, ValueError, KeyError, TypeError, DataError):
        return None


def _run(jobs, workers, bar):
    """The results of ``_work`` over ``jobs``, in a pool of ``workers`` processes."""
    results = []
    if workers == 1:
        for result in map(_work, jobs):
            results.append(result)
            bar.update()
        return results
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        for result in pool.imap_unordered(_work, jobs):
            results.append(result)
            bar.update()
    return results


def write_dataset(source, out, workers=None, progress=True, resume=True):
    """Write ``source``'s batches under ``out`` with ``workers`` processes (default: one per
    core); returns (metadata, number of images skipped as unreadable). With ``resume``, the
    batch files that an interrupted preparation of the same source and options wrote are
    checked and kept instead of made again.

    A source has ``name``, ``channels``, ``image_size``, ``classes``, ``options`` (recorded in
    the metadata), ``jobs()`` -> {split: [payload, ...]} (one payload per batch file) and
    ``make_batch(split, payload)`` -> (uint8 (B, C, H, W) images, labels, images skipped);
    optionally ``class_names`` (readable names of the classes, kept in the metadata)."""
    global _SOURCE
    _SOURCE = source
    writer = DatasetWriter(out, source.channels, source.image_size, source.classes,
                           source.name, source.options, getattr(source, "class_names", None),
                           resume=resume)
    jobs = [(split, i, writer.batch_path(split, i), writer.record_path(split, i), payload)
            for split, payloads in source.jobs().items() for i, payload in enumerate(payloads)]
    if writer.resumed:
        kept = sum(job[3].exists() for job in jobs)
        print(f"{out}: going on with an interrupted preparation: {kept} of {len(jobs)} batch "
              f"files were written before; they are checked, not made again", file=sys.stderr)
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs)))
    bar = tqdm(total=len(jobs), unit="batch", desc=f"preparing {source.name}",
               disable=not progress, file=sys.stderr)
    try:
        results = _run(jobs, workers, bar)
    finally:
        bar.close()
        _SOURCE = None
    # Batches left empty (every image unreadable) are dropped; the rest are renumbered.
    next_index = {}
    for split, index, entry, labels, stats, _ in sorted(results, key=lambda r: r[:2]):
        if entry is None:
            continue
        new = next_index.get(split, 0)
        next_index[split] = new + 1
        if new != index:
            os.replace(writer.batch_path(split, index), writer.batch_path(split, new))
        writer.add(split, new, entry, labels, stats)
    return writer.finish(), sum(r[5] for r in results)


def already_prepared(out, source):
    """True if ``out`` holds a finished dataset made from the same source and options."""
    if not (Path(out) / METADATA).exists():
        return False
    try:
        meta = read_metadata(out)
    except DataError:
        return False
    return meta.get("source") == source.name and meta.get("options") == source.options


SOURCES = {"imagefolder": "data.imagefolder", "imagenet": "data.imagenet",
           "fashion-mnist": "data.idx", "mnist": "data.idx", "cifar10": "data.cifar",
           "cifar100": "data.cifar", "synthetic": "data.synthetic"}


def _sources():
    return {name: importlib.import_module(module) for name, module in SOURCES.items()}


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m data.prepare", description=__doc__.split(
        "\n")[0].split(": ", 1)[1])
    sub = parser.add_subparsers(dest="source", required=True, metavar="SOURCE")
    for name, module in _sources().items():
        p = sub.add_parser(name, help=module.HELP[name] if isinstance(module.HELP, dict)
                           else module.HELP)
        p.add_argument("out", type=Path, help="folder to write the prepared dataset into")
        p.add_argument("--workers", type=int, default=None,
                       help="worker processes (default: one per core)")
        p.add_argument("--force", action="store_true",
                       help="rebuild even if OUT already holds this dataset")
        p.add_argument("--seed", type=int, default=0, help="seed of the one-time shuffle")
        module.add_arguments(p, name)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    module = _sources()[args.source]
    try:
        source = module.make_source(args.source, args)
        out = args.out
        if not args.force and already_prepared(out, source):
            print(f"{out}: already prepared from {source.name} with these options "
                  f"(--force rebuilds it)")
            return 0
        if out.exists() and any(out.iterdir()) and not args.force \
                and not (out / ".incomplete").exists():
            raise PrepareError(f"{out}: folder exists and holds something else; choose "
                               f"another folder or pass --force to overwrite it")
        meta, skipped = write_dataset(source, out, args.workers, resume=not args.force)
    except (PrepareError, DataError) as err:
        print(f"data.prepare: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"data.prepare: interrupted; the same command goes on where it stopped",
              file=sys.stderr)
        return 130
    counts = {s: meta["splits"][s]["count"] for s in ("train", "val")}
    print(f"{out}: {counts['train']} train / {counts['val']} val images, "
          f"{meta['channels']}x{meta['image_size'][0]}x{meta['image_size'][1]}, "
          f"{meta['num_classes']} classes; {skipped} unreadable images skipped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
