"""``python tests/sync/save_params.py OUT [--set k=v ...]``: train (under mpiexec or not) and
save what each rank ends with: OUT.<rank>.npy (its parameters: a worker's own, a server's
center or shard) and OUT.<rank>.json (role, final metrics, the rule's counters)."""
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
    args = parser.parse_args()
    w = world()
    result = train(load_config(None, args.set), world=w)
    rule = result["rule"]
    np.save(f"{args.out}.{w.rank}.npy", result["model"].params)
    summary = {"role": result["role"], "top1": result.get("top1"),
               "exchanges": getattr(rule, "exchanges", None)}
    if hasattr(rule, "weights_sum"):
        summary["weights_sum"] = rule.weights_sum()
    Path(f"{args.out}.{w.rank}.json").write_text(json.dumps(summary))
