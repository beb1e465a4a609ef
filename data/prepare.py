"""``python -m data.prepare SOURCE OUT [options]``: raw images -> a prepared dataset folder.

Sources: ``imagefolder`` (a folder per class of JPEG/PNG images), ``fashion-mnist`` and
``mnist`` (the IDX ``.gz`` files), ``synthetic`` (ImageNet-shaped random batches). The batch
files are produced by a pool of worker processes, one per core, with a progress bar; a folder
already prepared from the same source with the same options is left as it is (``--force``
rebuilds it). See ``data/format.py`` for what is written.
"""
import argparse
import importlib
import multiprocessing
import os
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from data.format import (METADATA, DataError, DatasetWriter, pixel_stats, read_metadata,
                         write_batch)

# The source behind the jobs that worker processes run: set in the parent before the pool
# forks, so workers inherit it instead of receiving large arrays through pipes.
_SOURCE = None


class PrepareError(RuntimeError):
    """The source cannot be prepared (missing input, bad options); the message says why."""


def _work(job):
    split, index, path, payload = job
    images, labels, skipped = _SOURCE.make_batch(split, payload)
    if len(images) == 0:
        return split, index, None, labels, None, skipped
    entry = write_batch(path, images)
    stats = pixel_stats(images) if split == "train" else None
    return split, index, entry, labels, stats, skipped


def write_dataset(source, out, workers=None, progress=True):
    """Write ``source``'s batches under ``out`` with ``workers`` processes (default: one per
    core); returns (metadata, number of images skipped as unreadable).

    A source has ``name``, ``channels``, ``image_size``, ``classes``, ``options`` (recorded in
    the metadata), ``jobs()`` -> {split: [payload, ...]} (one payload per batch file) and
    ``make_batch(split, payload)`` -> (uint8 (B, C, H, W) images, labels, images skipped)."""
    global _SOURCE
    _SOURCE = source
    writer = DatasetWriter(out, source.channels, source.image_size, source.classes,
                           source.name, source.options)
    jobs, next_index = [], {}
    for split, payloads in source.jobs().items():
        for i, payload in enumerate(payloads):
            jobs.append((split, i, writer.batch_path(split, i), payload))
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs)))
    skipped_total, results = 0, []
    bar = tqdm(total=len(jobs), unit="batch", desc=f"preparing {source.name}",
               disable=not progress, file=sys.stderr)
    try:
        if workers == 1:
            stream = map(_work, jobs)
            pool = None
        else:
            pool = multiprocessing.get_context("fork").Pool(workers)
            stream = pool.imap_unordered(_work, jobs)
        for result in stream:
            results.append(result)
            skipped_total += result[5]
            bar.update()
        if pool is not None:
            pool.close()
            pool.join()
    finally:
        bar.close()
        _SOURCE = None
    # Batches left empty (every image unreadable) are dropped; the rest are renumbered.
    for split, index, entry, labels, stats, _ in sorted(results, key=lambda r: r[:2]):
        if entry is None:
            continue
        new = next_index.get(split, 0)
        next_index[split] = new + 1
        if new != index:
            os.replace(writer.batch_path(split, index), writer.batch_path(split, new))
        writer.add(split, new, entry, labels, stats)
    return writer.finish(), skipped_total


def already_prepared(out, source):
    """True if ``out`` holds a finished dataset made from the same source and options."""
    if not (Path(out) / METADATA).exists():
        return False
    try:
        meta = read_metadata(out)
    except DataError:
        return False
    return meta.get("source") == source.name and meta.get("options") == source.options


SOURCES = {"imagefolder": "data.imagefolder", "fashion-mnist": "data.idx", "mnist": "data.idx",
           "synthetic": "data.synthetic"}


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
        meta, skipped = write_dataset(source, out, args.workers)
    except (PrepareError, DataError) as err:
        print(f"data.prepare: {err}", file=sys.stderr)
        return 2
    counts = {s: meta["splits"][s]["count"] for s in ("train", "val")}
    print(f"{out}: {counts['train']} train / {counts['val']} val images, "
          f"{meta['channels']}x{meta['image_size'][0]}x{meta['image_size'][1]}, "
          f"{meta['num_classes']} classes; {skipped} unreadable images skipped")
    return 0


if __name__ == "__main__":
    # Run the importable data.prepare, not this __main__ copy of it: the sources raise
    # data.prepare.PrepareError, which main() must catch as its own class.
    from data.prepare import main as _main
    sys.exit(_main())
