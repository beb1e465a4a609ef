"""``python tests/sync/save_params.py OUT [--set k=v ...]``: train (under mpiexec or not) and
save what each rank ends with: OUT.<rank>.npy (its parameters: a worker's own, a server's
center or shard) and OUT.<rank>.json (role, final metrics, the rule's counters, steps
skipped, a gossip worker's mixing weight).

Fault injection for tests: ``--rank-set R:k=v`` applies an override on rank R only;
``--fail R:S`` raises an error on rank R at its step S; ``--die R:S`` kills rank R (SIGKILL)
at its step S; ``--slow R:T`` makes rank R sleep T seconds every step (a straggler);
``--hang R:S`` makes rank R compute forever from its step S; ``--nan R:S`` makes rank R's
gradient NaN at its step S (before the rule sees it); ``--signal R:S:NAME`` has rank R send
itself signal NAME (SIGINT, SIGTERM, ...) after its step S (S 0: while it sets up, before
any step; a server: as it serves its S-th message); ``--signal-saving R:NAME`` has rank R
send itself NAME while it writes a checkpoint file after a stop signal. A run a stop signal
ended exits with the status it asked for.

``--displacements``: each worker also saves OUT.<rank>.moves.npz, the sum over its steps of
what its own optimizer step moved its parameters (``displacement``) and the same sum with
each step weighted by the rule's mixing weight ``a_i`` at that step (``weighted``, gossip)."""
import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import engine.train                     # noqa: E402
from core.config import load_config   # noqa: E402
from layers.backend import to_host          # noqa: E402
from engine.train import train          # noqa: E402
from sync.comm import leave, world      # noqa: E402

FAULTS = ("fail", "die", "slow", "hang", "nan", "signal", "signal_saving")


def inject_faults(mine, rank):
    """Wrap the rule this rank builds with the faults ``mine`` ({name: value}) asks for."""
    build = engine.train.build_rule

    def build_faulty(world_, cfg):
        if mine.get("signal", (None,))[0] == 0:       # step 0: while setting up
            os.kill(os.getpid(), signal.Signals[mine["signal"][1]])
        rule = build(world_, cfg)
        after_update, after_backward = rule.after_update, rule.after_backward

        def faulty(model, step):
            if step == mine.get("fail"):
                raise RuntimeError(f"injected failure on rank {rank} at step {step}")
            if step == mine.get("die"):
                os.kill(os.getpid(), signal.SIGKILL)
            if step == mine.get("hang"):
                with rule.log.phase("compute"):
                    time.sleep(3600)
            time.sleep(mine.get("slow", 0))
            after_update(model, step)
            if step == mine.get("signal", (None,))[0]:
                os.kill(os.getpid(), signal.Signals[mine["signal"][1]])

        def poisoned(model, step):
            if step == mine.get("nan"):
                model.grads[0] = np.nan
            after_backward(model, step)
        rule.after_update, rule.after_backward = faulty, poisoned
        if rule.is_server and "signal" in mine:       # a server counts the messages it serves
            serve_one, served = rule._serve_one, []

            def serving(*args):
                served.append(1)
                if len(served) == mine["signal"][0]:
                    os.kill(os.getpid(), signal.Signals[mine["signal"][1]])
                return serve_one(*args)
            rule._serve_one = serving
        return rule
    engine.train.build_rule = build_faulty


def signal_while_saving(name):
    """Once a stop signal has been received (the handlers are back to the default), send
    this process ``name`` in the middle of writing a checkpoint file: after its temporary
    file is written, before it is renamed."""
    import engine.checkpoint
    atomically = engine.checkpoint._write_atomically

    def interrupted(path, write):
        def write_then_signal(temporary):
            write(temporary)
            if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
                os.kill(os.getpid(), signal.Signals[name])
        return atomically(path, write_then_signal)
    engine.checkpoint._write_atomically = interrupted


def record_displacements():
    """Have every optimizer step add what it moved to ``moves`` (and times the rule's mixing
    weight, where it has one, to ``moves['weighted']``); returns ``moves``."""
    moves, build_rule, build_optimizer = {}, engine.train.build_rule, engine.train.build_optimizer

    def remember_rule(world_, cfg):
        moves["rule"] = build_rule(world_, cfg)
        return moves["rule"]

    def recording(section):
        optimizer = build_optimizer(section)
        step = optimizer.step

        def recorded(params, grads, lr):
            before = to_host(params).copy()
            step(params, grads, lr)
            moved = to_host(params) - before
            weight = getattr(moves["rule"], "weight", 1.0)
            for key, value in (("displacement", moved), ("weighted", weight * moved)):
                moves[key] = moves.get(key, 0) + value
        optimizer.step = recorded
        return optimizer
    engine.train.build_rule, engine.train.build_optimizer = remember_rule, recording
    return moves


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--config", default=None, help="a config file (default: none)")
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--rank-set", action="append", default=[])
    for name in FAULTS:
        parser.add_argument(f"--{name.replace('_', '-')}", default=None)
    parser.add_argument("--displacements", action="store_true")
    args = parser.parse_args()
    w = world()
    overrides = args.set + [s.split(":", 1)[1] for s in args.rank_set
                            if int(s.split(":", 1)[0]) == w.rank]
    faults = {name: getattr(args, name).split(":") for name in FAULTS if getattr(args, name)}
    mine = {name: (int(v[1]), v[2]) if name == "signal" else float(v[1])
            for name, v in faults.items() if int(v[0]) == w.rank and name != "signal_saving"}
    if "signal_saving" in faults and int(faults["signal_saving"][0]) == w.rank:
        signal_while_saving(faults["signal_saving"][1])
    if mine:
        inject_faults(mine, w.rank)
    moves = record_displacements() if args.displacements else None
    tick = time.perf_counter()
    result = train(load_config(args.config, overrides), world=w)
    seconds = time.perf_counter() - tick
    rule = result["rule"]
    np.save(f"{args.out}.{w.rank}.npy", to_host(result["model"].params))   # also from a GPU
    summary = {"role": result["role"], "top1": result.get("top1"), "seconds": seconds,
               "exchanges": getattr(rule, "exchanges", None),
               "dropped": getattr(rule, "dropped", []),     # server rules drop workers
               "skipped": result.get("skipped_steps")}
    if hasattr(rule, "exchange"):             # BSP: how its buffer was averaged
        model = result["model"]
        buffer = model.grads if rule.avg_freq == 1 else model.params
        summary["exchange"] = rule.exchange.method_for(buffer)
        summary["shared"] = rule.exchange.in_shared_memory(buffer)
    if hasattr(rule, "weights_sum"):
        summary["weights_sum"] = rule.weights_sum()
        summary["weight"] = rule.weight
    if moves and "displacement" in moves:
        np.savez(f"{args.out}.{w.rank}.moves.npz", displacement=moves["displacement"],
                 weighted=moves["weighted"])
    summary["stopped"] = result.get("stopped", 0)
    Path(f"{args.out}.{w.rank}.json").write_text(json.dumps(summary))
    sys.exit(leave(summary["stopped"]))


if __name__ == "__main__":
    main()
