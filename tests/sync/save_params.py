"""``python tests/sync/save_params.py OUT [--set k=v ...]``: train (under mpiexec or not) and
save what each rank ends with: OUT.<rank>.npy (its parameters: a worker's own, a server's
center or shard) and OUT.<rank>.json (role, final metrics, the rule's counters).

Fault injection for tests: ``--rank-set R:k=v`` applies an override on rank R only;
``--fail R:S`` raises an error on rank R at its step S; ``--die R:S`` kills rank R (SIGKILL)
at its step S; ``--slow R:T`` makes rank R sleep T seconds every step (a straggler);
``--hang R:S`` makes rank R compute forever from its step S."""
import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from core.config import load_config   # noqa: E402
from layers.backend import to_host          # noqa: E402
from engine.train import train          # noqa: E402
from sync.comm import leave, world      # noqa: E402

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--config", default=None, help="a config file (default: none)")
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--rank-set", action="append", default=[])
    parser.add_argument("--fail", default=None)
    parser.add_argument("--die", default=None)
    parser.add_argument("--slow", default=None)
    parser.add_argument("--hang", default=None)
    args = parser.parse_args()
    w = world()
    overrides = args.set + [s.split(":", 1)[1] for s in args.rank_set
                            if int(s.split(":", 1)[0]) == w.rank]
    faults = {name: value.split(":") for name, value in
              (("fail", args.fail), ("die", args.die), ("slow", args.slow),
               ("hang", args.hang)) if value}
    mine = {name: float(v[1]) for name, v in faults.items() if int(v[0]) == w.rank}
    if mine:
        import os
        import signal
        import time

        import engine.train
        build = engine.train.build_rule

        def build_faulty(world_, cfg):
            rule, after_update = build(world_, cfg), None

            def faulty(model, step):
                if step == mine.get("fail"):
                    raise RuntimeError(f"injected failure on rank {w.rank} at step {step}")
                if step == mine.get("die"):
                    os.kill(os.getpid(), signal.SIGKILL)
                if step == mine.get("hang"):
                    with rule.log.phase("compute"):
                        time.sleep(3600)
                time.sleep(mine.get("slow", 0))
                after_update(model, step)
            rule.after_update, after_update = faulty, rule.after_update
            return rule
        engine.train.build_rule = build_faulty
    import time
    tick = time.perf_counter()
    result = train(load_config(args.config, overrides), world=w)
    seconds = time.perf_counter() - tick
    rule = result["rule"]
    np.save(f"{args.out}.{w.rank}.npy", to_host(result["model"].params))   # also from a GPU
    summary = {"role": result["role"], "top1": result.get("top1"), "seconds": seconds,
               "exchanges": getattr(rule, "exchanges", None),
               "dropped": getattr(rule, "dropped", [])}     # server rules drop workers
    if hasattr(rule, "exchange"):             # BSP: how its buffer was averaged
        model = result["model"]
        buffer = model.grads if rule.avg_freq == 1 else model.params
        summary["exchange"] = rule.exchange.method_for(buffer)
        summary["shared"] = rule.exchange.in_shared_memory(buffer)
    if hasattr(rule, "weights_sum"):
        summary["weights_sum"] = rule.weights_sum()
    Path(f"{args.out}.{w.rank}.json").write_text(json.dumps(summary))
    leave(0)
