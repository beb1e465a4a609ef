"""``python -m engine.report RUN_DIR [RUN_DIR ...] [--out DIR]``: compare runs.

Writes ``report.png`` (training loss and validation top-1 against epochs and against wall
time, one line per run, so sync rules can be compared on one figure) and ``report.md`` (final
and best top-1, time, images/s, share of the step spent exchanging) into ``--out`` (default:
the first run's folder), and prints the table. Plots use matplotlib (the standard for this;
drawing PNGs by hand would be far more code for a worse result).
"""
import argparse
import json
import sys
from pathlib import Path


class ReportError(ValueError):
    """A run folder lacks what the report needs; the message names it."""


def read_jsonl(path):
    if not path.exists():
        return []
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except ValueError:
                raise ReportError(f"{path}:{number}: not a JSON line") from None
    return rows


def load_run(folder):
    """(name, metadata, step rows of the reporting worker, validation rows) of a run."""
    folder = Path(folder)
    try:
        meta = json.loads((folder / "metadata.json").read_text())
    except (OSError, ValueError) as err:
        raise ReportError(f"{folder}: not a run folder (metadata.json: {err})") from None
    reporter = meta["roles"].index("worker")
    steps = read_jsonl(folder / f"log.rank{reporter}.jsonl")
    metrics = read_jsonl(folder / "metrics.jsonl")
    name = f"{folder.name} ({meta['sync_rule']}, {meta['workers']} workers)"
    return name, meta, steps, metrics


def summary(meta, steps, metrics):
    times = {k: sum(r.get(f"{k}_s", 0.0) for r in steps) for k in ("compute", "exchange",
                                                                   "data")}
    busy = sum(times.values())
    images = sum(r.get("images", 0) for r in steps)
    return {"final": metrics[-1]["top1"] if metrics else None,
            "best": max((m["top1"] for m in metrics), default=None),
            "time": metrics[-1]["time"] if metrics else None,
            "images_s": images * meta["workers"] / busy if busy else None,
            "exchange": times["exchange"] / busy if busy else None}


def table(runs):
    lines = ["| run | final top-1 | best top-1 | time (s) | images/s | exchanging |",
             "| --- | --- | --- | --- | --- | --- |"]
    show = lambda v, f: "n/a" if v is None else f.format(v)   # noqa: E731
    for name, meta, steps, metrics in runs:
        s = summary(meta, steps, metrics)
        lines.append(f"| {name} | {show(s['final'], '{:.2%}')} | {show(s['best'], '{:.2%}')} "
                     f"| {show(s['time'], '{:.1f}')} | {show(s['images_s'], '{:.0f}')} | "
                     f"{show(s['exchange'], '{:.1%}')} |")
    return "\n".join(lines) + "\n"


def plot(runs, path):
    try:
        import matplotlib
    except ImportError:
        raise ReportError(f"{path} not drawn: matplotlib is not installed (pip install "
                          f"'matplotlib>=3.5', or reinstall this project: pip install -e .)"
                          ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figure, axes = plt.subplots(2, 2, figsize=(11, 8))
    for name, meta, steps, metrics in runs:
        epochs = [r["step"] / meta["steps_per_epoch"] for r in steps]
        axes[0, 0].plot(epochs, [r["loss"] for r in steps], label=name, linewidth=0.8)
        axes[0, 1].plot([r["time"] for r in steps], [r["loss"] for r in steps], label=name,
                        linewidth=0.8)
        axes[1, 0].plot([m["epoch"] for m in metrics], [m["top1"] for m in metrics], "o-",
                        label=name)
        axes[1, 1].plot([m["time"] for m in metrics], [m["top1"] for m in metrics], "o-",
                        label=name)
    titles = [("training loss", "epoch"), ("training loss", "wall time (s)"),
              ("validation top-1", "epoch"), ("validation top-1", "wall time (s)")]
    for ax, (title, xlabel) in zip(axes.flat, titles):
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m engine.report",
                                     description=__doc__.split("\n")[0].split(": ", 1)[1])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (log.dir)")
    parser.add_argument("--out", type=Path, default=None,
                        help="where report.png and report.md go (default: the first run)")
    args = parser.parse_args(argv)
    try:
        runs = [load_run(folder) for folder in args.runs]
    except ReportError as err:
        print(f"report: {err}", file=sys.stderr)
        return 2
    out = args.out or args.runs[0]
    out.mkdir(parents=True, exist_ok=True)
    text = table(runs)
    (out / "report.md").write_text(text)
    print(text + f"\nwrote {out / 'report.md'}")
    try:
        plot(runs, out / "report.png")
    except ReportError as err:
        print(f"report: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out / 'report.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
