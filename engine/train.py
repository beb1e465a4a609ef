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
import platform
import sys
import time

import numpy as np

from data.dataset import build_data
from data.format import DataError
from engine.checkpoint import CheckpointError, Checkpoints, export_weights
from engine.config import ConfigError, add_arguments, dump, load_config
from engine.device import array_module, feed, local_rank
from engine.metrics import topk_correct
from engine.models import build_model
from engine.optimizers import build_optimizer
from engine.progress import ProgressDisplay
from engine.runlog import RunLog, run_folder
from engine.watchdog import Watchdog
from engine.schedules import build_schedule
from engine.version import source_fingerprint
from layers import backend, parallel
from sync import build_rule
from sync.comm import install_abort_hook, leave, ranks_on_this_host, world as mpi_world

STALLED = 6     # exit status when stall_abort ends a job stuck in an exchange


class NonFiniteLoss(RuntimeError):
    """The training loss, the gradient or the parameters became NaN or infinite (with
    ``on_nonfinite: stop``; parameters always stop the run)."""


def all_finite(buffer):
    """No NaN or infinity in ``buffer`` (one float64 sum, no temporary array)."""
    return bool(np.isfinite(np.sum(buffer, dtype=np.float64)))


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
    for x, y in feed(model.xp, loader.epoch(0)):
        logits = model.forward(x, train=False)
        counts = topk_correct(logits, y, ks=(1, 5))
        sums += (float(model.loss.forward(logits, y)) * len(x), counts[1], counts[5], len(x))
    loss, correct1, correct5, n = rule.worker_sum(sums)
    return {"loss": loss / n, "top1": correct1 / n, "top5": correct5 / n}


def cores_per_rank(world):
    """This host's cores shared among its ranks, and no more than this process may run on
    (``mpiexec`` or Slurm may have bound it to fewer)."""
    local = ranks_on_this_host(world.comm) if world.comm is not None else 1
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1 << 16
    return max(1, min(usable, (os.cpu_count() or 1) // local))


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
    mine = {"version": source_fingerprint(), "parameters": model.num_params,
            "dtype": str(model.params.dtype),
            "layout": hashlib.sha1(repr([(layer.name, {k: v.shape for k, v in
                                                      layer.params.items()})
                                         for layer in model.leaves()]).encode()).hexdigest(),
            "config": hashlib.sha1(dump(cfg).encode()).hexdigest()}
    here = platform.node()
    first, host0 = world.comm.bcast((mine, here), root=0) if world.comm is not None \
        else (mine, here)
    changed = [f"{key} {mine[key]} (rank 0: {first[key]})" for key in mine
               if mine[key] != first[key]]
    if mine["version"] != first["version"]:
        changed.append("every host needs the same checkout of the project")
    if changed:
        return ConfigError, (f"rank {world.rank} on host {here} disagrees with rank 0 on host "
                             f"{host0}: {', '.join(changed)}")
    return None


def setup(cfg, rule, xp=np):
    """The model (its arrays in ``xp``: NumPy or CuPy), optimizer, data and schedule of this
    worker; raises ConfigError/DataError."""
    data = build_data(cfg, max(rule.worker_rank, 0), rule.num_workers, rule.val_shard)
    options = model_options(cfg, data)
    try:
        model = build_model(cfg["model"], options, cfg["dtype"], cfg["seed"], xp=xp)
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
    final metrics (on the workers that evaluate) with the trained ``model``, the ``rule`` and
    the run ``folder``."""
    world = world or mpi_world()
    install_abort_hook(world)
    problem, rule = None, None
    try:
        try:
            rule = build_rule(world, cfg)
        except ValueError as err:
            raise ConfigError(f"sync_rule: {err}") from None
        threads = parallel.set_workers(cfg["threads"] or cores_per_rank(world))
        xp = np if rule.is_server else array_module(cfg["device"], local_rank(), cfg["tf32"])
        model, optimizer, data, schedule, progress = setup(cfg, rule, xp)
    except (ConfigError, DataError) as err:
        problem = (type(err), str(err))
    agree(world, problem)
    agree(world, differences(world, model, cfg))
    folder = run_folder(cfg, world)
    log = RunLog(cfg, world, rule, folder)
    rule.log = log
    placement = ("server" if rule.is_server else "worker", platform.node(), threads)
    roles, hosts, counts = zip(*(world.comm.allgather(placement) if world.comm is not None
                                 else [placement]))
    if world.rank == 0:
        log.write_metadata(model, data.description, {"roles": roles, "hosts": hosts,
                                                     "threads": counts},
                           progress.steps_per_epoch)
    display = ProgressDisplay(out or sys.stdout, rule.reports, progress.total_steps,
                              cfg["print_every"], rule.num_workers, bar=cfg["log"]["bar"])
    display.message(f"model {model.name}: {model.num_params:,} parameters, {cfg['dtype']}; "
                    f"{rule.name} over {rule.num_workers} worker(s) of {world.size} rank(s) "
                    f"on {len(set(hosts))} host(s), {threads} thread(s) per rank here; "
                    f"{data.description}; batch {cfg['batch_size']} per worker, "
                    f"{progress.total_steps} steps; run folder {folder}")
    for note in data.notes:
        display.message(f"note: {note}")
    rule.start(model)
    checkpoints = Checkpoints(cfg, world, rule, model, optimizer, progress, folder)
    resumed = checkpoints.resume(display.message)
    watchdog = Watchdog(folder, world.rank, world.size, log, progress, cfg["watchdog"],
                        abort_seconds=cfg["stall_abort"], abort=lambda: world.comm.Abort(STALLED)
                        ).start() if world.size > 1 and (cfg["watchdog"] or cfg["stall_abort"]) \
        else None
    try:
        if rule.is_server:
            rule.serve(model, optimizer, schedule, progress.steps_per_epoch,
                       checkpoints.write_own)
            return {"model": model, "rule": rule, "role": "server", "folder": folder}
        history = run_epochs(cfg, model, optimizer, data, schedule, progress, rule, log,
                             display, checkpoints)
        if cfg["log"]["export"]:
            with rule.evaluated(model):          # the model users care about
                if rule.reports:
                    export_weights(folder / "weights.hkl", model)
    finally:
        if watchdog is not None:
            watchdog.stop()
        log.close()
    final = dict(history[-1] if history else {}, skipped_steps=progress.skipped,
                 history=history, model=model, rule=rule, role="worker", folder=folder,
                 resumed_from=resumed)
    if history:
        display.message(f"final: top1 {final['top1']:.4f} top5 {final['top5']:.4f} after "
                        f"{progress.step} steps, {final['time']:.1f} s, {progress.skipped} "
                        f"skipped")
    return final


def run_epochs(cfg, model, optimizer, data, schedule, progress, rule, log, display,
               checkpoints):
    """A worker's training from where ``progress`` is to the end: epochs, validations of the
    model users care about, checkpoints, the rule's finish; returns the validation history."""
    start, history = time.perf_counter(), []

    def validate(epoch):
        with rule.evaluated(model):
            metrics = evaluate(model, data.val, rule) if rule.evaluates else None
        if metrics is not None:
            metrics.update(epoch=epoch, step=progress.step, train_loss=progress.last_finite,
                           time=time.perf_counter() - start)
            history.append(metrics)
            log.metrics(metrics)
            display.message(f"epoch {epoch} val loss {metrics['loss']:.4f} top1 "
                            f"{metrics['top1']:.4f} top5 {metrics['top5']:.4f} "
                            f"({metrics['time']:.1f} s)")

    with np.errstate(over="ignore", invalid="ignore"):   # a non-finite loss is reported
        epoch = max(1, -(-progress.step // progress.steps_per_epoch))   # a finished run's last
        batches = feed(model.xp, data.train.stream(progress.step // progress.steps_per_epoch,
                                                   start=progress.step % progress.steps_per_epoch))
        try:
            while progress.step < progress.total_steps:
                epoch = progress.step // progress.steps_per_epoch + 1
                train_epoch(model, optimizer, schedule, batches, epoch, cfg, progress, rule,
                            log, display)
                end_of_epoch = progress.step % progress.steps_per_epoch == 0
                if end_of_epoch and epoch % cfg["eval_every"] == 0 \
                        and progress.step < progress.total_steps:
                    validate(epoch)
                if end_of_epoch or progress.step == progress.total_steps:
                    checkpoints.maybe_save(epoch, display.message,
                                           last=progress.step == progress.total_steps)
        finally:
            batches.close()
        rule.finish(model)
        validate(epoch)                      # the final model, after the rule's last exchange
    return history


class Progress:
    """Where the run is: steps done, the last finite loss, steps skipped for a bad loss."""

    def __init__(self, total_steps, steps_per_epoch):
        self.total_steps, self.steps_per_epoch = total_steps, steps_per_epoch
        self.step, self.last_finite, self.skipped = 0, None, 0


def train_epoch(model, optimizer, schedule, batches, epoch, cfg, progress, rule, log, display):
    """What is left of epoch ``epoch`` (or of the run), from the loader's stream ``batches``:
    forward, non-finite guard (on the loss the workers agree on), backward, the rule's hooks
    around the update; the time of each part goes to the run log, every ``log.every`` steps a
    log line, and the display is updated."""
    display.start_epoch(epoch, progress.steps_per_epoch)
    end = min(epoch * progress.steps_per_epoch, progress.total_steps)
    while progress.step < end:
        with log.phase("data") as waited:
            x, y = next(batches)
        lr = schedule.lr_at(progress.step / progress.steps_per_epoch)
        saved = {k: v.copy() for k, v in model.state().items()} \
            if cfg["on_nonfinite"] == "skip" else None
        with log.phase("compute"):
            loss = float(model.forward_loss(x, y)[0])
        with log.phase("exchange"):
            loss = rule.agree_loss(loss)
        progress.step += 1
        if not np.isfinite(loss):
            if saved is None:
                before = "no finite loss yet" if progress.last_finite is None else \
                    f"last finite loss: {progress.last_finite}"
                raise NonFiniteLoss(f"loss became {loss} at step {progress.step} (epoch "
                                    f"{epoch}); {before}")
            model.load_state(saved)   # the bad batch's BatchNorm statistics are dropped
            progress.skipped += 1
            continue
        progress.last_finite = loss
        with log.phase("compute"):
            model.backward(rule.backward_hook)
        with log.phase("exchange"):
            rule.after_backward(model, progress.step)
            finite = rule.agree_finite(all_finite(model.grads))
        if not finite:                         # caught before it reaches the parameters
            if saved is None:
                raise NonFiniteLoss(f"the gradient became non-finite at step {progress.step} "
                                    f"(epoch {epoch}, after the {rule.name} exchange); loss "
                                    f"{loss}")
            model.load_state(saved)
            progress.skipped += 1
            continue
        with log.phase("compute"):
            optimizer.step(model.params, model.grads, lr=lr)
        with log.phase("exchange"):
            rule.after_update(model, progress.step)
        if not all_finite(model.params):
            raise NonFiniteLoss(f"the parameters became non-finite at step {progress.step} "
                                f"(epoch {epoch}) after the update and the {rule.name} "
                                f"exchange")
        display.step(epoch, progress.step, loss, lr, len(x), waited.seconds)
        if progress.step % log.every == 0:
            log.step({"step": progress.step, "epoch": epoch, "loss": loss, "lr": lr,
                      "images": len(x) * log.every})
    display.end_epoch()


def main(argv=None):
    parser = add_arguments(argparse.ArgumentParser(
        prog="python -m engine.train", description=__doc__.split("\n")[0]))
    parser.add_argument("--resume", nargs="?", const="auto", default=None, metavar="PATH",
                        help="continue from the newest checkpoint in log.dir (or from PATH: a "
                             "run folder or one checkpoint's folder)")
    args = parser.parse_args(argv)
    overrides = args.set + ([f"resume={args.resume}"] if args.resume else [])
    try:
        cfg = load_config(args.config, overrides)
        train(cfg)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    except DataError as err:
        print(f"data error: {err}", file=sys.stderr)
        return 3
    except CheckpointError as err:
        print(f"checkpoint error: {err}", file=sys.stderr)
        return 4
    except NonFiniteLoss as err:
        print(f"training stopped: {err}", file=sys.stderr)
        return 1
    except MemoryError as err:
        print(f"out of memory: {err or 'an allocation failed'}; use a smaller batch_size, "
              f"model or dataset", file=sys.stderr)
        return 5
    except Exception as err:
        if not backend.out_of_memory(err):
            raise
        print(f"out of GPU memory: {err}; batch_size {cfg['batch_size']} of model "
              f"{cfg['model']} ({cfg['dtype']}) does not fit on this GPU: use a smaller "
              f"batch_size", file=sys.stderr)
        return 5
    return 0


if __name__ == "__main__":
    sys.exit(leave(main()))
