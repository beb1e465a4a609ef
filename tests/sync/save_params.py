"""``python tests/sync/save_params.py OUT [--set k=v ...]``: train (under mpiexec or not) and
save what each rank ends with: OUT.<rank>.npy (its parameters: a worker's own, a server's
center or shard) and OUT.<rank>.json (role, final metrics, the rule's counters).

Fault injection for tests: ``--rank-set R:k=v`` applies an override on rank R only;
``--fail R:S`` raises an error on rank R after its step S."""
import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from engine.config import load_config   # noqa: E402
from engine.train import train          # noqa: E402
from sync.comm import world             # noqa: E402

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--rank-set", action="append", default=[])
    parser.add_argument("--fail", default=None)
    args = parser.parse_args()
    w = world()
    overrides = args.set + [s.split(":", 1)[1] for s in args.rank_set
                            if int(s.split(":", 1)[0]) == w.rank]
    if args.fail is not None and int(args.fail.split(":")[0]) == w.rank:
        import engine.train
        fail_step, build = int(args.fail.split(":")[1]), engine.train.build_rule

        def build_failing(world_, cfg):
            rule, after_update = build(world_, cfg), None

            def fail_at_step(model, step):
                if step == fail_step:
                    raise RuntimeError(f"injected failure on rank {w.rank} at step {step}")
                after_update(model, step)
            rule.after_update, after_update = fail_at_step, rule.after_update
            return rule
        engine.train.build_rule = build_failing
    result = train(load_config(None, overrides), world=w)
    rule = result["rule"]
    np.save(f"{args.out}.{w.rank}.npy", result["model"].params)
    summary = {"role": result["role"], "top1": result.get("top1"),
               "exchanges": getattr(rule, "exchanges", None)}
    if hasattr(rule, "weights_sum"):
        summary["weights_sum"] = rule.weights_sum()
    Path(f"{args.out}.{w.rank}.json").write_text(json.dumps(summary))
