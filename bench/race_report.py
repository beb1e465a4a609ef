"""The table and the figure of ``bench/race.py``; also redraws them from a saved race:

    python bench/race_report.py bench/race/race.json     # writes race.md and race.png beside it

Each cell gives the training seconds to each target accuracy (the median over the runs, with
their range when there are several, and how many runs reached it), the final top-1, and how
busy the busiest link was. A cell is marked "compute" where the rule reached its last target
at that rate within 10% of its time on unlimited links: there the link did not set the pace.
"""
import json
import statistics
import sys
from pathlib import Path
from types import SimpleNamespace

COMPUTE_BOUND = 1.10


def runs_of(rows, rule, rate, slow=False):
    return [r for r in rows if r["rule"] == rule and r["rate"] == rate and r["slow"] == slow]


def median_time(runs, target):
    """Median seconds to ``target`` over the runs that reached it, or None if any did not."""
    times = [r["to"][str(target)] for r in runs]
    return None if not times or None in times else statistics.median(times)


def spread(values, form="{:.0f} s"):
    """'median' or 'median (min-max)'; 'not reached' when a run did not get there."""
    done = [v for v in values if v is not None]
    if not values or len(done) < len(values):
        return f"not reached ({len(done)} of {len(values)})" if done else "not reached"
    text = form.format(statistics.median(done))
    if len(done) > 1:
        text += f" ({form.format(min(done))} to {form.format(max(done))})"
    return text


def times(runs, targets):
    """'<to the first target> / <to the second> ...' over ``runs``."""
    return " / ".join(spread([r["to"][str(t)] for r in runs]) for t in targets)


def cell(rows, rule, rate, targets):
    runs = runs_of(rows, rule, rate)
    if not runs:
        return "n/a"
    if any(r["code"] for r in runs):
        return f"failed ({sum(1 for r in runs if r['code'])} of {len(runs)})"
    text = f"{times(runs, targets)}, final {spread([r['final'] for r in runs], '{:.2%}')}"
    busy = [r["link_busy"] for r in runs if "link_busy" in r]
    if busy:
        text += f", link {statistics.median(busy):.0%}"
    here, free = (median_time(x, targets[-1]) for x in (runs, runs_of(rows, rule, "unlimited")))
    if rate != "unlimited" and here and free and here <= COMPUTE_BOUND * free:
        text += ", compute"
    return text


def straggler(rows, rule, rate, targets):
    """The half-speed runs' times to the targets and final top-1, and the ratio of their time
    to the first target to the even runs'."""
    slow, even = runs_of(rows, rule, rate, True), runs_of(rows, rule, rate)
    if not slow:
        return "n/a"
    if any(r["code"] for r in slow):
        return "failed"
    here, base = median_time(slow, targets[0]), median_time(even, targets[0])
    ratio = f" ({here / base:.2f}x the even run's to {targets[0]:.0%})" if here and base else ""
    return f"{times(slow, targets)}, final {spread([r['final'] for r in slow], '{:.2%}')}" \
           + ratio


def table(rows, args, minutes):
    targets, rates = args.targets, args.rates
    repeats = max((r["repeat"] for r in rows), default=0) + 1
    lines = [f"Training seconds to {' / '.join(f'{t:.0%}' for t in targets)} validation top-1 "
             f"on {args.workers} simulated hosts (+1 for a server), {repeats} run(s) per cell "
             f"(median, range where more than one); final top-1; busiest link's use. "
             f"compute: within 10% of the unlimited run, so the link did not set the pace. "
             f"Settings: {' '.join(args.set) or 'the default job'}; eval every "
             f"{args.eval_every:g} epoch; the race took {minutes:.0f} min.", "",
             "| rule | " + " | ".join(rates) + f" | one host at half speed ({rates[-1]}) |",
             "| --- |" + " --- |" * (len(rates) + 1)]
    for rule in args.rules:
        lines.append(f"| {rule} | " + " | ".join(cell(rows, rule, rate, targets)
                                                for rate in rates)
                     + f" | {straggler(rows, rule, rates[-1], targets)} |")
    return "\n".join(lines) + "\n"


def draw(rows, args, path):
    """Time to each target against the link rate, one line per rule (half speed: hollow)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figure, axes = plt.subplots(1, len(args.targets), figsize=(5.5 * len(args.targets), 4.2),
                                squeeze=False)
    positions = range(len(args.rates))
    for ax, target in zip(axes[0], args.targets):
        for rule in args.rules:
            times = [median_time(runs_of(rows, rule, rate), target) for rate in args.rates]
            line, = ax.plot(positions, [float("nan") if t is None else t for t in times],
                            "o-", label=rule)
            slow = median_time(runs_of(rows, rule, args.rates[-1], True), target)
            if slow is not None:
                ax.plot([positions[-1]], [slow], "o", mfc="none", color=line.get_color(),
                        label=f"{rule}, one host at half speed")
        ax.set_xticks(list(positions), args.rates)
        ax.set_xlabel("link rate (each host, each way)")
        ax.set_ylabel(f"training seconds to {target:.0%} top-1")
        ax.set_title(f"time to {target:.0%} validation top-1")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main(argv):
    if len(argv) != 1:
        sys.exit("usage: python bench/race_report.py RACE_JSON")
    path = Path(argv[0])
    saved = json.loads(path.read_text())
    args = SimpleNamespace(**saved["args"])
    text = table(saved["rows"], args, saved["minutes"])
    (path.parent / "race.md").write_text(text)
    draw(saved["rows"], args, path.parent / "race.png")
    print(text + f"\nwrote {path.parent / 'race.md'} and {path.parent / 'race.png'}")


if __name__ == "__main__":
    main(sys.argv[1:])
