"""Training driver: ``python -m engine.train config.yaml [--set key=value ...]``, alone or as
every rank of ``mpiexec -n N python -m engine.train config.yaml``.

Each worker trains the configured model on its shard of the data with SGD/Adagrad under a
learning-rate policy; the sync rule (``sync_rule``) combines the workers (``sync/``). After each
epoch the model users care about (the rule says which) is evaluated: top-1/top-5 and loss over
the validation set, summed over the workers' shards. A non-finite loss stops the run (naming
the step and the last finite loss) or skips the step, as ``on_nonfinite`` says. Only the first
worker prints; every rank agrees at start that the setup worked on all of them.
"""
import argparse
import hashlib
import os
import sys
import time

import numpy as np

from data.dataset import build_data
from data.format import DataError
from engine.config import ConfigError, add_arguments, dump, load_config
from engine.metrics import topk_correct
from engine.models import build_model
from engine.optimizers import build_optimizer
from engine.schedules import build_schedule
from layers import parallel
from sync import build_rule
from sync.comm import install_abort_hook, world as mpi_world


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite (with ``on_nonfinite: stop``)."""


def model_options(cfg, data):
    """The model's keyword arguments: input geometry from the data, then ``model_options``."""
    options = {"in_channels": data.channels, "num_classes": data.num_classes}
    if cfg["model"] in ("mlp", "googlenet"):
        options["image_size"] = data.image_size
    options.update(cfg["model_options"] or {})
    return options


def evaluate(model, loader, rule):
    """Mean loss, top-1 and top-5 accuracy of the main head over the validation images (each
    worker takes its shard of the loader's split; the sums are added over the workers)."""
    sums = np.zeros(4)                         # loss sum, top-1 and top-5 counts, images
    for x, y in loader.epoch(0):
        logits = model.forward(x, train=False)
        counts = topk_correct(logits, y, ks=(1, 5))
        sums += (float(model.loss.forward(logits, y)) * len(x), counts[1], counts[5], len(x))
    loss, correct1, correct5, n = rule.worker_sum(sums)
    return {"loss": loss / n, "top1": correct1 / n, "top5": correct5 / n}


def cores_per_rank(world):
    """This host's cores shared among its ranks."""
    local = world.comm.Split_type(world.MPI.COMM_TYPE_SHARED).Get_size() \
        if world.comm is not None else 1
    return max(1, (os.cpu_count() or 1) // local)


def agree(world, problem):
    """Every rank learns whether setup failed anywhere; the first problem is raised on all."""
    problems = world.comm.allgather(problem) if world.comm is not None else [problem]
    for rank, found in enumerate(problems):
        if found is not None:
            kind, message = found
            where = f"rank {rank}: " if world.size > 1 and kind is not ConfigError else ""
            raise kind(where + message)


def differences(world, model, cfg):
    """A problem (for ``agree``) if this rank's model or config differs from rank 0's."""
    mine = {"parameters": model.num_params, "dtype": str(model.params.dtype),
            "layout": hashlib.sha1(repr([(layer.name, {k: v.shape for k, v in
                                                      layer.params.items()})
                                         for layer in model.leaves()]).encode()).hexdigest(),
            "config": hashlib.sha1(dump(cfg).encode()).hexdigest()}
    first = world.comm.bcast(mine, root=0) if world.comm is not None else mine
    changed = [f"{key} {mine[key]} (rank 0: {first[key]})" for key in mine
               if mine[key] != first[key]]
    if changed:
        return ConfigError, f"rank {world.rank} disagrees with rank 0: {', '.join(changed)}"
    return None


def setup(cfg, rule):
    """The model, optimizer, data and schedule of this worker; raises ConfigError/DataError."""
    data = build_data(cfg, max(rule.worker_rank, 0), rule.num_workers, rule.val_shard)
    options = model_options(cfg, data)
    try:
        model = build_model(cfg["model"], options, cfg["dtype"], cfg["seed"])
    except ConfigError:
        raise
    except (TypeError, ValueError) as err:
        raise ConfigError(f"model_options: model '{cfg['model']}' cannot be built with "
                          f"{options}: {err}") from None
    optimizer = build_optimizer(cfg["optimizer"])
    steps_per_epoch = data.train.steps_per_epoch
    if steps_per_epoch == 0:
        raise ConfigError(f"batch_size: {cfg['batch_size']} per worker x {rule.num_workers} "
                          f"workers is more than the {len(data.train.split)} training images")
    total_steps = int(round(cfg["epochs"] * steps_per_epoch))
    if cfg["max_steps"]:
        total_steps = min(total_steps, cfg["max_steps"])
    if total_steps == 0:
        raise ConfigError(f"epochs: {cfg['epochs']} epochs of {steps_per_epoch} steps is less "
                          f"than one step")
    schedule = build_schedule(cfg["lr_schedule"], cfg["optimizer"]["lr"], cfg["epochs"])
    return model, optimizer, data, schedule, Progress(total_steps, steps_per_epoch)


def train(cfg, out=None, world=None):
    """Run this rank's part of the job described by the resolved config ``cfg``; returns the
    final metrics (on the workers that evaluate) with the trained ``model`` and the ``rule``."""
    world = world or mpi_world()
    install_abort_hook(world)
    problem, rule = None, None
    try:
        try:
            rule = build_rule(world, cfg)
        except ValueError as err:
            raise ConfigError(f"sync_rule: {err}") from None
        threads = parallel.set_workers(cfg["threads"] or cores_per_rank(world))
        model, optimizer, data, schedule, progress = setup(cfg, rule)
    except (ConfigError, DataError) as err:
        problem = (type(err), str(err))
    agree(world, problem)
    agree(world, differences(world, model, cfg))
    out = (out or sys.stdout) if rule.reports else open(os.devnull, "w")
    print(f"model {model.name}: {model.num_params:,} parameters, {cfg['dtype']}; "
          f"{rule.name} over {rule.num_workers} worker(s) of {world.size} rank(s), "
          f"{threads} thread(s) each; {data.description}; batch {cfg['batch_size']} per "
          f"worker, {progress.total_steps} steps", file=out, flush=True)
    rule.start(model)
    if rule.is_server:
        rule.serve(model, optimizer, schedule, progress.steps_per_epoch)
        return {"model": model, "rule": rule, "role": "server"}
    start, history = time.perf_counter(), []

    def validate(epoch):
        with rule.evaluated(model):
            metrics = evaluate(model, data.val, rule) if rule.evaluates else None
        if metrics is not None:
            metrics.update(epoch=epoch, step=progress.step, train_loss=progress.last_finite,
                           time=time.perf_counter() - start)
            history.append(metrics)
            print(f"epoch {epoch} val loss {metrics['loss']:.4f} top1 {metrics['top1']:.4f} "
                  f"top5 {metrics['top5']:.4f} ({metrics['time']:.1f} s)", file=out, flush=True)

    with np.errstate(over="ignore", invalid="ignore"):   # a non-finite loss is reported
        while progress.step < progress.total_steps:
            epoch = progress.step // progress.steps_per_epoch + 1
            train_epoch(model, optimizer, schedule, data.train, epoch, cfg, progress, rule,
                        out)
            if epoch % cfg["eval_every"] == 0 and progress.step < progress.total_steps:
                validate(epoch)
        rule.finish(model)
        validate(epoch)                      # the final model, after the rule's last exchange
    final = dict(history[-1] if history else {}, skipped_steps=progress.skipped,
                 history=history, model=model, rule=rule, role="worker")
    if history:
        print(f"final: top1 {final['top1']:.4f} top5 {final['top5']:.4f} after "
              f"{progress.step} steps, {final['time']:.1f} s, {progress.skipped} skipped",
              file=out, flush=True)
    return final


class Progress:
    """Where the run is: steps done, the last finite loss, steps skipped for a bad loss."""

    def __init__(self, total_steps, steps_per_epoch):
        self.total_steps, self.steps_per_epoch = total_steps, steps_per_epoch
        self.step, self.last_finite, self.skipped = 0, None, 0


def train_epoch(model, optimizer, schedule, loader, epoch, cfg, progress, rule, out):
    """One epoch of ``loader`` (or what is left of the run): forward, non-finite guard (on the
    loss the workers agree on), backward, the rule's hooks around the update, and a progress
    line every ``print_every`` steps with the images/s and the time the step waited for data."""
    tick, seen, waited = time.perf_counter(), 0, loader.wait_time
    for x, y in loader.epoch(epoch - 1):
        if progress.step >= progress.total_steps:
            return
        lr = schedule.lr_at(progress.step / progress.steps_per_epoch)
        saved = {k: v.copy() for k, v in model.state().items()} \
            if cfg["on_nonfinite"] == "skip" else None
        loss = rule.agree_loss(float(model.forward_loss(x, y)[0]))
        progress.step += 1
        if not np.isfinite(loss):
            if saved is None:
                raise NonFiniteLoss(f"loss became {loss} at step {progress.step} (epoch "
                                    f"{epoch}); last finite loss: {progress.last_finite}")
            model.load_state(saved)   # the bad batch's BatchNorm statistics are dropped
            progress.skipped += 1
            continue
        progress.last_finite = loss
        model.backward(rule.backward_hook)
        rule.after_backward(model, progress.step)
        optimizer.step(model.params, model.grads, lr=lr)
        rule.after_update(model, progress.step)
        seen += len(x)
        if progress.step % cfg["print_every"] == 0:
            rate = seen * rule.num_workers / (time.perf_counter() - tick)
            wait_ms = (loader.wait_time - waited) * 1e3 / cfg["print_every"]
            print(f"epoch {epoch} step {progress.step}/{progress.total_steps} loss {loss:.4f} "
                  f"lr {lr:.4g} {rate:.1f} img/s, data wait {wait_ms:.1f} ms/step",
                  file=out, flush=True)
            tick, seen, waited = time.perf_counter(), 0, loader.wait_time


def main(argv=None):
    parser = add_arguments(argparse.ArgumentParser(
        prog="python -m engine.train", description=__doc__.split("\n")[0]))
    args = parser.parse_args(argv)
    try:
        train(load_config(args.config, args.set))
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    except DataError as err:
        print(f"data error: {err}", file=sys.stderr)
        return 3
    except NonFiniteLoss as err:
        print(f"training stopped: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
