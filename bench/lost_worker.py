"""Accuracy of an asynchronous rule that loses a worker, against healthy runs:
``python bench/lost_worker.py --rule DOWNPOUR [--workers 4] [--epochs 1] [--die-at 100]``.

Trains the default job (config.yaml) three ways, one after the other, under ULFM as the
launchers run these rules: N workers with the last one killed (SIGKILL) at its step
``--die-at``; N-1 healthy workers; N healthy workers. Prints the final validation top-1 of
each and the differences. The kill uses the test suite's fault injection
(tests/sync/save_params.py --die).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SERVERS = {"EASGD": 1, "DOWNPOUR": 1}


def run(rule, workers, epochs, sets, die=None):
    """(top-1 of the reporting worker, seconds)."""
    servers = SERVERS[rule]
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "rank"
        command = ["mpiexec", "--oversubscribe", "--with-ft", "ulfm", "-n",
                   str(servers + workers), sys.executable, ROOT / "tests/sync/save_params.py",
                   out, "--config", ROOT / "config.yaml", "--set", f"sync_rule={rule}",
                   "--set", f"epochs={epochs}", "--set", "log.bar=false",
                   "--set", f"log.dir={folder}/run"]
        for setting in sets:
            command += ["--set", setting]
        if die is not None:
            command += ["--die", f"{servers + workers - 1}:{die}"]
        env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
                   PYTHONPATH=str(ROOT))
        tick = time.perf_counter()
        done = subprocess.run(list(map(str, command)), env=env, capture_output=True,
                              text=True, timeout=6 * 3600)
        seconds = time.perf_counter() - tick
        if done.returncode:
            sys.exit(f"{rule} failed ({done.returncode}):\n{done.stderr[-2000:]}")
        return json.loads(Path(f"{out}.{servers}.json").read_text())["top1"], seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rule", choices=sorted(SERVERS), default="DOWNPOUR")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--epochs", type=float, default=1)
    parser.add_argument("--die-at", type=int, default=100, help="the killed worker's step")
    parser.add_argument("--set", action="append", default=[], help="to every run")
    args = parser.parse_args()
    n = args.workers
    rows = [(f"{n} workers, worker {n} killed at its step {args.die_at}",
             run(args.rule, n, args.epochs, args.set, die=args.die_at)),
            (f"{n - 1} healthy workers", run(args.rule, n - 1, args.epochs, args.set)),
            (f"{n} healthy workers", run(args.rule, n, args.epochs, args.set))]
    lost = rows[0][1][0]
    print(f"{args.rule}, {args.epochs:g} epoch(s) of the default job\n\n"
          f"| run | top-1 | lost run minus this | time |\n| --- | ---: | ---: | ---: |")
    for name, (top1, seconds) in rows:
        print(f"| {name} | {100 * top1:.2f}% | {100 * (lost - top1):+.2f} | {seconds:.0f} s |")


if __name__ == "__main__":
    main()
