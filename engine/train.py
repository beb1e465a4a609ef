"""Training driver: ``python -m engine.train config.yaml [--set key=value ...]``.

One process trains the configured model with SGD/Adagrad under a learning-rate policy,
evaluating top-1/top-5 on the validation set after each epoch. A non-finite loss stops the
run (naming the step and the last finite loss) or skips the step, as ``on_nonfinite`` says.
"""
import argparse
import sys
import time

import numpy as np

from data.dataset import build_data
from data.format import DataError
from engine.config import ConfigError, add_arguments, load_config
from engine.metrics import topk_correct
from engine.models import build_model
from engine.optimizers import build_optimizer
from engine.schedules import build_schedule
from layers import parallel

SINGLE_PROCESS_RULES = ("BSP", "LOCAL")


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite (with ``on_nonfinite: stop``)."""


def model_options(cfg, data):
    """The model's keyword arguments: input geometry from the data, then ``model_options``."""
    options = {"in_channels": data.channels, "num_classes": data.num_classes}
    if cfg["model"] in ("mlp", "googlenet"):
        options["image_size"] = data.image_size
    options.update(cfg["model_options"] or {})
    return options


def evaluate(model, loader):
    """Mean loss, top-1 and top-5 accuracy of the main head over the loader's images."""
    correct1 = correct5 = n = 0
    loss_sum = 0.0
    for x, y in loader.epoch(0):
        logits = model.forward(x, train=False)
        loss_sum += float(model.loss.forward(logits, y)) * len(x)
        counts = topk_correct(logits, y, ks=(1, 5))
        correct1, correct5, n = correct1 + counts[1], correct5 + counts[5], n + len(x)
    return {"loss": loss_sum / n, "top1": correct1 / n, "top5": correct5 / n}


def train(cfg, out=None):
    """Run the job described by the resolved config ``cfg``; returns the final metrics."""
    out = out or sys.stdout
    if cfg["sync_rule"] not in SINGLE_PROCESS_RULES:
        raise ConfigError(f"sync_rule: {cfg['sync_rule']} needs MPI workers; this driver runs "
                          f"one process, allowed here: {', '.join(SINGLE_PROCESS_RULES)}")
    threads = parallel.set_workers(cfg["threads"])
    data = build_data(cfg)
    options = model_options(cfg, data)
    try:
        model = build_model(cfg["model"], options, cfg["dtype"], cfg["seed"])
    except ConfigError:
        raise
    except (TypeError, ValueError) as err:
        raise ConfigError(f"model_options: model '{cfg['model']}' cannot be built with "
                          f"{options}: {err}") from None
    optimizer = build_optimizer(cfg["optimizer"])
    batch = cfg["batch_size"]
    steps_per_epoch = data.train.steps_per_epoch
    if steps_per_epoch == 0:
        raise ConfigError(f"batch_size: {batch} is larger than the {len(data.train.split)} "
                          f"training images")
    schedule = build_schedule(cfg["lr_schedule"], cfg["optimizer"]["lr"], cfg["epochs"])
    total_steps = int(round(cfg["epochs"] * steps_per_epoch))
    if cfg["max_steps"]:
        total_steps = min(total_steps, cfg["max_steps"])
    if total_steps == 0:
        raise ConfigError(f"epochs: {cfg['epochs']} epochs of {steps_per_epoch} steps is less "
                          f"than one step")
    print(f"model {model.name}: {model.num_params:,} parameters, {cfg['dtype']}, "
          f"{threads} worker threads; {data.description}; batch {batch}, {total_steps} steps",
          file=out, flush=True)

    progress = Progress(total_steps, steps_per_epoch)
    start, history = time.perf_counter(), []
    with np.errstate(over="ignore", invalid="ignore"):   # a non-finite loss is reported
        while progress.step < total_steps:
            epoch = progress.step // steps_per_epoch + 1
            train_epoch(model, optimizer, schedule, data.train, epoch, cfg, progress, out)
            if epoch % cfg["eval_every"] and progress.step < total_steps:
                continue
            metrics = evaluate(model, data.val)
            metrics.update(epoch=epoch, step=progress.step, train_loss=progress.last_finite,
                           time=time.perf_counter() - start)
            history.append(metrics)
            print(f"epoch {epoch} val loss {metrics['loss']:.4f} top1 {metrics['top1']:.4f} "
                  f"top5 {metrics['top5']:.4f} ({metrics['time']:.1f} s)", file=out, flush=True)
    final = dict(history[-1], skipped_steps=progress.skipped, history=history)
    print(f"final: top1 {final['top1']:.4f} top5 {final['top5']:.4f} after {progress.step} "
          f"steps, {final['time']:.1f} s, {progress.skipped} skipped", file=out, flush=True)
    return final


class Progress:
    """Where the run is: steps done, the last finite loss, steps skipped for a bad loss."""

    def __init__(self, total_steps, steps_per_epoch):
        self.total_steps, self.steps_per_epoch = total_steps, steps_per_epoch
        self.step, self.last_finite, self.skipped = 0, None, 0


def train_epoch(model, optimizer, schedule, loader, epoch, cfg, progress, out):
    """One epoch of ``loader`` (or what is left of the run): forward, non-finite guard,
    backward, update, and a progress line every ``print_every`` steps with the images/s and
    the time the step waited for data."""
    tick, seen, waited = time.perf_counter(), 0, loader.wait_time
    for x, y in loader.epoch(epoch - 1):
        if progress.step >= progress.total_steps:
            return
        lr = schedule.lr_at(progress.step / progress.steps_per_epoch)
        saved = {k: v.copy() for k, v in model.state().items()} \
            if cfg["on_nonfinite"] == "skip" else None
        loss = float(model.forward_loss(x, y)[0])
        progress.step += 1
        if not np.isfinite(loss):
            if saved is None:
                raise NonFiniteLoss(f"loss became {loss} at step {progress.step} (epoch "
                                    f"{epoch}); last finite loss: {progress.last_finite}")
            model.load_state(saved)   # the bad batch's BatchNorm statistics are dropped
            progress.skipped += 1
            continue
        progress.last_finite = loss
        model.backward()
        optimizer.step(model.params, model.grads, lr=lr)
        seen += len(x)
        if progress.step % cfg["print_every"] == 0:
            rate = seen / (time.perf_counter() - tick)
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
