"""Every sync rule on the default job: ``python bench/rules.py [--workers 2] [--epochs 2]``.

Runs ``run/run_<rule>.sh`` (BSP, EASGD, DOWNPOUR, GOSSIP, and LOCAL through mpiexec) with the
same config, workers and epochs, one after the other, and prints a Markdown table of the final
validation top-1, its difference to BSP, the wall time and the training images/s. Extra
``--set key=value`` arguments go to every run.
"""
import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = {"BSP": "run_bsp.sh", "EASGD": "run_easgd.sh", "DOWNPOUR": "run_downpour.sh",
           "GOSSIP": "run_gossip.sh", "LOCAL": "run_bsp.sh"}


def run(rule, args):
    command = [str(ROOT / "run" / SCRIPTS[rule]), str(args.workers), str(args.config),
               "--set", f"epochs={args.epochs}"]
    for setting in args.set:
        command += ["--set", setting]
    if rule == "LOCAL":
        command += ["--set", "sync_rule=LOCAL"]
    tick = time.perf_counter()
    out = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout,
                         env=os.environ)
    seconds = time.perf_counter() - tick
    final = re.search(r"final: top1 ([\d.]+)", out.stdout)
    if out.returncode or final is None:
        sys.exit(f"{rule} failed ({out.returncode}):\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    rates = [float(r) for r in re.findall(r"([\d.]+) img/s", out.stdout)]
    return float(final.group(1)), seconds, (sum(rates) / len(rates) if rates else float("nan"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=float, default=2)
    parser.add_argument("--config", type=Path, default=ROOT / "config.yaml")
    parser.add_argument("--rules", nargs="+", default=list(SCRIPTS))
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--timeout", type=int, default=3600)
    args = parser.parse_args()
    print(f"{args.workers} workers, {args.epochs:g} epochs, {args.config.name} "
          f"{' '.join(args.set)}")
    print("| rule | top-1 | vs BSP | time | images/s (mean of the progress lines) |")
    print("| --- | --- | --- | --- | --- |")
    bsp = None
    for rule in args.rules:
        top1, seconds, rate = run(rule, args)
        bsp = top1 if rule == "BSP" else bsp
        delta = f"{100 * (top1 - bsp):+.2f}" if bsp is not None else "n/a"
        print(f"| {rule} | {100 * top1:.2f}% | {delta} | {seconds:.0f} s | {rate:.0f} |",
              flush=True)


if __name__ == "__main__":
    main()
