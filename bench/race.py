"""Which rule at which link: every sync rule on the default job, over simulated hosts whose
links are limited to a rate, timed to fixed validation accuracies.

    python bench/race.py --quick                  # 2 rates, 0.4 epoch: under 15 minutes
    python bench/race.py                          # 4 rates, the full default job
    python bench/race.py --rates 50mbit unlimited --rules BSP GOSSIP --repeats 3

For each link rate, ``run/netns.py`` makes one simulated host per worker (and one for the
server of EASGD and Downpour), each link limited to the rate both ways (``tc tbf``; latency
cannot be added on this kernel). Each rule runs the default job through its launcher across
those hosts, one rank per host, validating every ``--eval-every`` epochs. A run's time to an
accuracy is its training time (validations left out) at the first validation at or above it.
One more run per rule at the fastest rate slows one worker's host to half speed
(``slowdown.factor: 2``: it sleeps as long as each of its steps took). Writes into ``--out``:
``race.json`` (every run), ``race.md`` (the table) and ``race.png`` (time to each accuracy
against link rate, one line per rule).

Honest limits: all hosts share this machine's cores, so a rule that needs more processes (a
server) takes compute from the workers, and where a run at a rate takes no longer than at
``unlimited`` it was limited by compute, not by the link: the table marks those cells. The
link columns also give how busy the busiest link was.
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.report import read_jsonl   # noqa: E402
from run.netns import NetnsCluster, NetnsError, parse_rate   # noqa: E402

RULES = ("BSP", "EASGD", "DOWNPOUR", "GOSSIP")
SCRIPTS = {"BSP": "run_bsp.sh", "EASGD": "run_easgd.sh", "DOWNPOUR": "run_downpour.sh",
           "GOSSIP": "run_gossip.sh"}
SERVERS = {"EASGD": 1, "DOWNPOUR": 1}
FULL_RATES = ["50mbit", "200mbit", "1gbit", "unlimited"]
QUICK_RATES = ["50mbit", "unlimited"]
QUICK_TARGETS = [0.75, 0.80]


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"rates {' '.join(QUICK_RATES)}, 0.4 epoch, targets "
                             f"{QUICK_TARGETS} (under 15 minutes here)")
    parser.add_argument("--rates", nargs="+", help=f"link rates (default {FULL_RATES})")
    parser.add_argument("--rules", nargs="+", default=list(RULES), choices=RULES)
    parser.add_argument("--workers", type=int, default=2, help="workers (one host each)")
    parser.add_argument("--targets", nargs="+", type=float, default=None,
                        help="validation top-1 accuracies to time (default 0.85 0.88)")
    parser.add_argument("--eval-every", type=float, default=None,
                        help="epochs between validations (default 0.25; --quick 0.2)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per rule and rate")
    parser.add_argument("--no-straggler", action="store_true",
                        help="skip the runs with one host at half speed")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "race")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per run")
    parser.add_argument("--set", action="append", default=[], help="key=value for every run")
    args = parser.parse_args(argv)
    args.rates = args.rates or (QUICK_RATES if args.quick else FULL_RATES)
    for rate in args.rates:
        if rate != "unlimited":
            try:
                parse_rate(rate)
            except ValueError as err:
                parser.error(str(err))
    if args.quick:
        args.set = ["epochs=0.4"] + args.set
    args.targets = args.targets or (QUICK_TARGETS if args.quick else [0.85, 0.88])
    args.eval_every = args.eval_every or (0.2 if args.quick else 0.25)
    return args


def launch(cluster, rule, args, folder, slow):
    """One run of ``rule`` over the cluster's first hosts; returns (exit code, output)."""
    ranks = args.workers + SERVERS.get(rule, 0)
    env = dict(os.environ, PT_HOSTFILE=str(cluster.hostfile(1, ranks)),
               PT_AGENT=str(cluster.agent), PT_INTERFACE=cluster.network)
    env.pop("PRTE_MCA_rmaps_default_mapping_policy", None)   # the hostfile's slots count
    sets = args.set + [f"log.dir={folder}", f"eval_every={args.eval_every}",
                       "log.export=false", "print_every=100000"]
    if slow:
        sets += [f"slowdown.rank={ranks - 1}", "slowdown.factor=2"]   # the last worker
    command = cluster.command(cluster.names[0], [ROOT / "run" / SCRIPTS[rule], args.workers]
                              + [a for s in sets for a in ("--set", s)])
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True,
                              timeout=args.timeout)
    except subprocess.TimeoutExpired as err:
        return 124, f"no end within {args.timeout} s\n{err.stdout or ''}{err.stderr or ''}"
    return done.returncode, done.stdout + done.stderr


def measure(cluster, rule, rate, args, repeat, slow=False):
    """Run once; the result row (times to the targets, final top-1, link use)."""
    name = f"{rate}-{rule.lower()}{'-slow' if slow else ''}-{repeat}"
    folder = args.out / "runs" / name
    before, tick = cluster.traffic(), time.perf_counter()
    code, output = launch(cluster, rule, args, folder, slow)
    wall = time.perf_counter() - tick
    crossed = max(cluster.traffic()[h] - before[h] for h in before)
    metrics = read_jsonl(folder / "metrics.jsonl")
    row = {"rule": rule, "rate": rate, "slow": slow, "repeat": repeat, "wall": wall,
           "code": code, "final": metrics[-1]["top1"] if metrics else None,
           "train_time": metrics[-1]["train_time"] if metrics else None,
           "to": {str(t): next((m["train_time"] for m in metrics if m["top1"] >= t), None)
                  for t in args.targets}}
    if rate != "unlimited" and row["train_time"]:   # busiest link: bytes each way / capacity
        row["link_busy"] = crossed / 2 * 8 / parse_rate(rate) / row["train_time"]
    if code != 0:
        row["error"] = output[-1500:]
    return row


def race(args):
    """Every run, rate by rate (one cluster per rate); rows as they come."""
    rows, hosts = [], args.workers + 1
    fastest = args.rates[-1]
    for rate in args.rates:
        cluster = NetnsCluster(hosts, prefix="pt-race", subnet="10.81.0",
                               folder=args.out / "netns",
                               rate=None if rate == "unlimited" else rate)
        (args.out / "netns").mkdir(parents=True, exist_ok=True)
        try:
            cluster.up()
            for repeat in range(args.repeats):
                for rule in args.rules:
                    for slow in (False, True):
                        if slow and (rate != fastest or args.no_straggler):
                            continue
                        rows.append(measure(cluster, rule, rate, args, repeat, slow))
                        show(rows[-1])
        finally:
            cluster.down()
    return rows


def show(row):
    to = ", ".join(f"{float(t):.0%} {fmt(s)}" for t, s in row["to"].items())
    busy = f", busiest link {row['link_busy']:.0%}" if "link_busy" in row else ""
    slow = " (one host at half speed)" if row["slow"] else ""
    failed = f"; FAILED (exit {row['code']}): {row['error'][-300:]}" if row["code"] else ""
    print(f"{row['rate']:>9} {row['rule']:<8}{slow}: to {to}; final "
          f"{fmt(row['final'], '{:.2%}')} after {fmt(row['train_time'])} of training, "
          f"{row['wall']:.0f} s in all{busy}{failed}", flush=True)


def fmt(value, form="{:.0f} s"):
    return "not reached" if value is None else form.format(value)


def main(argv=None):
    args = parse(argv)
    if os.geteuid() != 0:
        sys.exit("bench/race.py makes network namespaces: run it as root")
    args.out.mkdir(parents=True, exist_ok=True)
    tick = time.perf_counter()
    print(f"race: rules {' '.join(args.rules)}, rates {' '.join(args.rates)}, "
          f"{args.workers} workers, {args.repeats} run(s) each, {' '.join(args.set) or ''}",
          flush=True)
    try:
        rows = race(args)
    except NetnsError as err:
        sys.exit(f"cannot make the simulated hosts: {err}")
    minutes = (time.perf_counter() - tick) / 60
    (args.out / "race.json").write_text(json.dumps({"args": vars(args) | {
        "out": str(args.out)}, "minutes": minutes, "rows": rows}, indent=1))
    from race_report import draw, table
    text = table(rows, args, minutes)
    (args.out / "race.md").write_text(text)
    print(text)
    draw(rows, args, args.out / "race.png")
    print(f"wrote {args.out / 'race.md'}, {args.out / 'race.png'}, {args.out / 'race.json'}; "
          f"the race took {minutes:.1f} min")


if __name__ == "__main__":
    main()
