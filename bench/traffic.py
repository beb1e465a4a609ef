"""Network traffic per step of every sync rule, measured on the wire:
``sudo python bench/traffic.py [--workers 4] [--steps 20 80]``.

Each rank runs on its own simulated host (run/netns.py: a network namespace with one
interface, TCP between addresses), started by the rule's run/ launcher. Bytes received and
sent on every host's interface are read before and after two runs that differ only in their
number of steps; the difference over the difference in steps is the traffic of one step,
without start-up, evaluation and shutdown. Printed per host role as bytes and as multiples of
the model's parameter buffer (inception_small, the default job's model, on synthetic images
of the same shape). Needs root.
"""
import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from run.netns import NetnsCluster, NetnsError   # noqa: E402

RULES = {"BSP": ("run_bsp.sh", 0), "EASGD": ("run_easgd.sh", 1),
         "DOWNPOUR": ("run_downpour.sh", 1), "GOSSIP": ("run_gossip.sh", 0)}
JOB = ["data.dataset=synthetic", "data.path=null", "data.image_size=28", "data.channels=1",
       "data.num_train=65536", "data.num_val=64", "batch_size=8", "threads=1", "log.export=false", "print_every=1000",
       "checkpoint.every_epochs=0", "watchdog=null"]


def run(cluster, rule, workers, steps, sets):
    """Bytes per host for one run of ``steps`` steps; also the parameter count."""
    script, servers = RULES[rule]
    env = dict(os.environ, PT_HOSTFILE=str(cluster.hostfile(1, workers + servers)),
               PT_AGENT=str(cluster.agent), PT_INTERFACE=cluster.network,
               OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    command = [ROOT / "run" / script, workers, ROOT / "config.yaml"]
    for setting in JOB + [f"max_steps={steps}", "log.dir=/tmp/pt-traffic-run"] + sets:
        command += ["--set", setting]
    before = cluster.traffic()
    done = subprocess.run(cluster.command(cluster.names[0], command), env=env,
                          capture_output=True, text=True, timeout=900)
    if done.returncode:
        sys.exit(f"{rule} failed ({done.returncode}):\n{done.stdout[-2000:]}"
                 f"\n{done.stderr[-2000:]}")
    after = cluster.traffic()
    params = int(re.search(r"([\d,]+) parameters", done.stdout)[1].replace(",", ""))
    return [after[h] - before[h] for h in cluster.names[:workers + servers]], params


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--steps", type=int, nargs=2, default=(20, 80))
    parser.add_argument("--rules", nargs="+", default=list(RULES), choices=list(RULES))
    parser.add_argument("--set", action="append", default=[], help="to every run")
    args = parser.parse_args()
    few, many = args.steps
    cluster = NetnsCluster(args.workers + 1, prefix="pt-bench", subnet="10.79.0")
    try:
        cluster.up()
    except NetnsError as err:
        cluster.down()
        sys.exit(f"cannot make network namespaces (run as root): {err}")
    print(f"{args.workers} workers, one rank per simulated host; bytes received + sent per "
          f"step on a host's interface, from runs of {few} and {many} steps\n")
    print("| rule | host | bytes/step | buffers/step |\n|---|---|---:|---:|")
    try:
        for rule in args.rules:
            short, params = run(cluster, rule, args.workers, few, args.set)
            long, _ = run(cluster, rule, args.workers, many, args.set)
            per_step = [(b - a) / (many - few) for a, b in zip(short, long)]
            servers = RULES[rule][1]
            roles = [("server", per_step[:servers]), ("worker (mean)", per_step[servers:])]
            for role, values in roles:
                if values:
                    mean = sum(values) / len(values)
                    print(f"| {rule} | {role} | {mean:,.0f} | {mean / (4 * params):.2f} |",
                          flush=True)
    finally:
        cluster.down()
    print(f"\nbuffer: {params:,} float32 parameters = {4 * params:,} bytes")


if __name__ == "__main__":
    main()
