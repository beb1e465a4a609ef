"""Training driver: ``python -m engine.train config.yaml [--set key=value ...]``, alone or as
every rank of ``mpiexec -n N python -m engine.train config.yaml``.

Each worker trains the configured model on its shard of the data with SGD/Adagrad under a
learning-rate policy; the sync rule (``sync_rule``) combines the workers (``sync/``), through
the hooks of ``sync/rule.py`` alone: this driver knows no rule. After each epoch the model
users care about (the rule says which) is evaluated: top-1/top-5 and loss over the validation
set, summed over the workers' shards. A non-finite loss stops the run (naming the step and the
last finite loss) or skips the step, as ``on_nonfinite`` says. Only the first worker prints;
every rank agrees at start that the setup worked on all of them. ``--check`` prints the
resolved configuration (or its problems) and exits.
"""
import argparse
import hashlib
import os
import platform
import sys
import time

import numpy as np

import sync                               # noqa: F401  (registers every rule and its keys)
from core.config import add_arguments, dump, load_config
from core.device import array_module, feed, local_rank
from core.errors import ConfigError
from core.memory import keep_freed
from core.models import build_model
from core.optimizers import build_optimizer
from core.schedules import build_schedule
from data.dataset import build_data
from data.format import DataError
from engine.checkpoint import CheckpointError, Checkpoints
from engine.epochs import NonFiniteLoss, Progress, all_finite, run_epochs   # noqa: F401
from engine.progress import ProgressDisplay
from engine.runlog import RunLog, run_folder
from engine.stopping import StopSignals
from engine.version import source_fingerprint
from engine.watchdog import Watchdog
from layers import backend, parallel
from layers import c as ckernels
from sync import build_rule
from sync.comm import cuda_aware, install_abort_hook, leave, world as mpi_world

STALLED = 6     # exit status when stall_abort ends a job stuck in an exchange


def geometry(data):
    """What a model may take from the data: input channels, classes, image size."""
    return {"in_channels": data.channels, "num_classes": data.num_classes,
            "image_size": data.image_size}


def cores_per_rank(world):
    """This host's cores shared among its ranks, and no more than this process may run on
    (``mpiexec`` or Slurm may have bound it to fewer)."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1 << 16
    return max(1, min(usable, (os.cpu_count() or 1) // world.ranks_on_this_host()))


def agree(world, problem):
    """Every rank learns whether setup failed anywhere; the first problem is raised on all."""
    for rank, found in enumerate(world.allgather(problem)):
        if found is not None:
            kind, message = found
            where = f"rank {rank}: " if world.size > 1 and kind is not ConfigError else ""
            raise kind(where + message)


def attempt(build):
    """(``build()``, None), or (None, the problem for ``agree``) for a setup error."""
    try:
        return build(), None
    except (ConfigError, DataError) as err:
        return None, (type(err), str(err))


def differences(world, model, cfg):
    """A problem (for ``agree``) if this rank's model or config differs from rank 0's."""
    mine = {"version": source_fingerprint(), "parameters": model.num_params,
            "dtype": str(model.params.dtype),
            "layout": hashlib.sha1(repr([(layer.name, {k: v.shape for k, v in
                                                      layer.params.items()})
                                         for layer in model.leaves()]).encode()).hexdigest(),
            "config": hashlib.sha1(dump(cfg).encode()).hexdigest()}
    here = platform.node()
    first, host0 = world.bcast((mine, here))
    changed = [f"{key} {mine[key]} (rank 0: {first[key]})" for key in mine
               if mine[key] != first[key]]
    if mine["version"] != first["version"]:
        changed.append("every host needs the same checkout of the project")
    if changed:
        return ConfigError, (f"rank {world.rank} on host {here} disagrees with rank 0 on host "
                             f"{host0}: {', '.join(changed)}")
    return None


class Run:
    """One rank's run, from setup to the end: what the driver holds (config, world, rule,
    data, model, optimizer, schedule, progress, log, display, checkpoints) in one place."""

    def __init__(self, cfg, world, out=None, signals=None):
        self.cfg, self.world, self.out = cfg, world, out or sys.stdout
        self.signals = signals or StopSignals()   # the stop signals (train installs them)
        self.stopped = 0                  # the exit status a stop signal asked for (130, 143)
        # before any large buffer: how freed memory is kept (core/memory.py), CPU runs only
        self.heap = keep_freed(cfg["keep_freed_memory"]) if cfg["device"] == "cpu" else None
        built, problem = attempt(self._rule_and_data)
        agree(world, problem)
        self.rule, self.threads, self.xp, self.data = built
        agree(world, attempt(lambda: self.rule.prepare(self.xp))[1])
        built, problem = attempt(self._model_and_training)
        agree(world, problem)
        self.model, self.optimizer, self.schedule, self.progress = built
        # the gradient summed over micro-batches (accumulate > 1)
        self.accumulated = self.model.xp.empty_like(self.model.grads) \
            if cfg["accumulate"] > 1 else None
        agree(world, differences(world, self.model, cfg))
        self.folder = run_folder(cfg, world)
        self.log = self.rule.log = RunLog(cfg, world, self.rule, self.folder)
        self.display = ProgressDisplay(self.out, self.rule.reports, self.progress.total_steps,
                                       cfg["print_every"], self.rule.num_workers,
                                       bar=cfg["log"]["bar"])

    # -- setup ------------------------------------------------------------------------------
    def _rule_and_data(self):
        cfg, world = self.cfg, self.world
        try:
            rule = build_rule(world, cfg)
        except ValueError as err:
            raise ConfigError(f"sync_rule: {err}") from None
        slow = cfg["slowdown"]["rank"]
        if slow is not None and slow >= world.size:
            raise ConfigError(f"slowdown.rank: {slow}, but this job has {world.size} rank(s), "
                              f"0 to {world.size - 1}")
        threads = parallel.set_workers(cfg["threads"] or cores_per_rank(world))
        xp = np if rule.is_server else array_module(cfg["device"], local_rank(), cfg["tf32"])
        data = build_data(cfg, max(rule.worker_rank, 0), rule.num_workers, rule.val_shard)
        return rule, threads, xp, data

    def _model_and_training(self):
        """The model (its flat buffers placed by the rule), optimizer, schedule and progress;
        after every rank has its data (placing the buffers may be collective)."""
        cfg = self.cfg
        try:
            model = build_model(cfg["model"], cfg["model_options"], cfg["dtype"], cfg["seed"],
                                xp=self.xp, geometry=geometry(self.data),
                                allocate=self.rule.allocate)
        except ConfigError:
            raise
        except (TypeError, ValueError) as err:
            raise ConfigError(f"model_options: model '{cfg['model']}' cannot be built with "
                              f"{cfg['model_options']}: {err}") from None
        schedule = build_schedule(cfg["lr_schedule"], self.learning_rate(), cfg["epochs"])
        optimizer = build_optimizer(self.rule.optimizer_section(cfg["optimizer"]))
        return model, optimizer, schedule, self._progress()

    def learning_rate(self):
        """``optimizer.lr``, times the total batch over ``batch_size`` (workers x accumulate)
        with ``optimizer.scale_lr: linear`` (Goyal et al. 2017)."""
        return self.cfg["optimizer"]["lr"] * self.lr_factor()

    def lr_factor(self):
        linear = self.cfg["optimizer"]["scale_lr"] == "linear"
        return self.rule.num_workers * self.cfg["accumulate"] if linear else 1

    def _progress(self):
        cfg, steps_per_epoch = self.cfg, self.data.train.steps_per_epoch
        if steps_per_epoch == 0:
            times = f" x {cfg['accumulate']} (accumulate)" if cfg["accumulate"] > 1 else ""
            raise ConfigError(f"batch_size: {cfg['batch_size']} per worker{times} x "
                              f"{self.rule.num_workers} workers is more than the "
                              f"{len(self.data.train.split)} training images")
        total_steps = int(round(cfg["epochs"] * steps_per_epoch))
        if cfg["max_steps"]:
            total_steps = min(total_steps, cfg["max_steps"])
        if total_steps == 0:
            raise ConfigError(f"epochs: {cfg['epochs']} epochs of {steps_per_epoch} steps is "
                              f"less than one step")
        return Progress(total_steps, steps_per_epoch)

    def introduce(self):
        """The metadata file, and the start line (with the data's notes) on the first worker."""
        placement = ("server" if self.rule.is_server else "worker", platform.node(),
                     self.threads)
        roles, hosts, counts = zip(*self.world.allgather(placement))
        aware = self._cuda_aware()
        kernels = ckernels.status(self.cfg["dtype"]) if self.cfg["device"] == "cpu" else None
        if self.world.rank == 0:
            extra = {"cuda_aware_mpi": aware} if aware else \
                {"cpu_kernels": kernels, "cpu_memory": self.heap}
            self.log.write_metadata(self.model, self.data.description,
                                    {"roles": roles, "hosts": hosts, "threads": counts},
                                    self.progress.steps_per_epoch, extra)
        cfg, model, rule = self.cfg, self.model, self.rule
        self.display.message(
            f"model {model.name}: {model.num_params:,} parameters, {cfg['dtype']}; {rule.name} "
            f"over {rule.num_workers} worker(s) of {self.world.size} rank(s) on "
            f"{len(set(hosts))} host(s), {self.threads} thread(s) per rank here; "
            f"{self.data.description}; batch {cfg['batch_size']} per worker"
            f"{self._accumulation()}, {self.progress.total_steps} steps{self._lr_line()}; "
            f"run folder {self.folder}")
        if rule.describe():
            self.display.message(rule.describe())
        if aware:
            how = "as they are" if aware["answer"] else "through pinned host copies"
            self.display.message(f"CUDA-aware MPI: {'yes' if aware['answer'] else 'no'} "
                                 f"({aware['how']}): GPU buffers go to MPI {how}")
        if kernels:
            self.display.message(f"CPU kernels: {kernels}; memory: {self.heap}")
        for note in self.data.notes:
            self.display.message(f"note: {note}")

    def _cuda_aware(self):
        """On GPUs with several ranks: {"answer", "how"} of ``sync.comm.cuda_aware``."""
        if self.cfg["device"] != "gpu" or self.world.size == 1:
            return None
        answer, how = cuda_aware()
        return {"answer": answer, "how": how}

    def _accumulation(self):
        k = self.cfg["accumulate"]
        return f" x {k} micro-batches a step" if k > 1 else ""

    def _lr_line(self):
        factor = self.lr_factor()
        if factor == 1:
            return ""
        cfg = self.cfg
        total = cfg["batch_size"] * cfg["accumulate"] * self.rule.num_workers
        return (f"; learning rate {cfg['optimizer']['lr']:g} x {factor} = "
                f"{self.learning_rate():g} (scale_lr linear, total batch {total})")

    # -- the run ----------------------------------------------------------------------------
    def execute(self):
        """This rank's part of the job; the final metrics (on the workers that evaluate) with
        the trained ``model``, the ``rule`` and the run ``folder``."""
        self.introduce()
        self.rule.start(self.model)
        self.checkpoints = Checkpoints(self.cfg, self.world, self.rule, self.model,
                                       self.optimizer, self.progress, self.folder)
        self.progress.log_clock = self.log.clock
        resumed = self.checkpoints.resume(self.display.message)
        if resumed:     # the log's clock goes on from its reading at the checkpoint, so that
            self.log.origin = time.perf_counter() - self.progress.log_elapsed   # rows ascend
        watchdog = self._watchdog()
        self.rule.signals = self.signals
        try:
            if self.rule.is_server:
                self.rule.serve(self.model, self.optimizer, self.schedule,
                                self.progress.steps_per_epoch, self.checkpoints.write_own)
                return {"model": self.model, "rule": self.rule, "role": "server",
                        "folder": self.folder}
            history = run_epochs(self)
        finally:
            if watchdog is not None:
                watchdog.stop()
            self.log.close()
        return self._final(history, resumed)

    def _watchdog(self):
        cfg, world = self.cfg, self.world
        if world.size == 1 or not (cfg["watchdog"] or cfg["stall_abort"]):
            return None
        return Watchdog(self.folder, world.rank, world.size, self.log, self.progress,
                        cfg["watchdog"], abort_seconds=cfg["stall_abort"],
                        abort=lambda: world.abort(STALLED)).start()

    def _final(self, history, resumed):
        progress = self.progress
        final = dict(history[-1] if history else {}, skipped_steps=progress.skipped,
                     history=history, model=self.model, rule=self.rule, role="worker",
                     folder=self.folder, resumed_from=resumed, stopped=self.stopped,
                     step=progress.step)
        if self.stopped:
            return final
        if history:
            self.display.message(f"final: top1 {final['top1']:.4f} top5 {final['top5']:.4f} "
                                 f"after {progress.step} steps, {final['time']:.1f} s, "
                                 f"{progress.skipped} skipped")
        return final


def train(cfg, out=None, world=None):
    """Run this rank's part of the job described by the resolved config ``cfg``; returns the
    final metrics (on the workers that evaluate) with the trained ``model``, the ``rule`` and
    the run ``folder``."""
    signals = StopSignals().install()     # first: a signal during set-up stops at step 1
    try:
        world = world or mpi_world()
        install_abort_hook(world)
        return Run(cfg, world, out, signals).execute()
    finally:
        signals.uninstall()


def check(cfg):
    """``--check``: the resolved configuration, every default filled in."""
    print(dump(cfg), end="")


def main(argv=None):
    parser = add_arguments(argparse.ArgumentParser(
        prog="python -m engine.train", description=__doc__.split("\n")[0]))
    parser.add_argument("--resume", nargs="?", const="auto", default=None, metavar="PATH",
                        help="continue from the newest checkpoint in log.dir (or from PATH: a "
                             "run folder or one checkpoint's folder)")
    parser.add_argument("--check", action="store_true",
                        help="print the resolved configuration (or its problems) and exit")
    args = parser.parse_args(argv)
    overrides = args.set + ([f"resume={args.resume}"] if args.resume else [])
    cfg = None
    try:
        cfg = load_config(args.config, overrides)
        if args.check:
            check(cfg)
        else:
            return train(cfg).get("stopped", 0)   # 130 or 143 after a stop signal
    except Exception as err:              # noqa: BLE001  (every known failure has its status)
        return failed(err, cfg)
    return 0


# what each failure prints and the exit status it ends with (see the README)
FAILURES = [(ConfigError, "config error", 2), (DataError, "data error", 3),
            (CheckpointError, "checkpoint error", 4), (NonFiniteLoss, "training stopped", 1)]


def failed(err, cfg):
    """Print ``err`` as the user should read it and return its exit status; re-raise what is
    not a known failure (a bug: the traceback is the information)."""
    for kind, what, status in FAILURES:
        if isinstance(err, kind):
            print(f"{what}: {err}", file=sys.stderr)
            return status
    if isinstance(err, MemoryError):
        print(f"out of memory: {err or 'an allocation failed'}; use a smaller batch_size, "
              f"model or dataset", file=sys.stderr)
        return 5
    if backend.out_of_memory(err):
        print(f"out of GPU memory: {err}; batch_size {cfg['batch_size']} of model "
              f"{cfg['model']} ({cfg['dtype']}) does not fit on this GPU: use a smaller "
              f"batch_size", file=sys.stderr)
        return 5
    raise err


if __name__ == "__main__":
    sys.exit(leave(main()))
