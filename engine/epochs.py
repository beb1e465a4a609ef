"""A worker's training loop over a ``Run`` (engine/train.py): epochs of steps, validation of
the model users care about, checkpoints, and the non-finite guard.

With ``accumulate: k`` a step's batch is k micro-batches of ``batch_size``: each goes forward
and backward, the gradients are averaged, and the step goes on from the exchange as one batch
(one exchange a step; BSP's overlap then has nothing to overlap with).

On the GPU (``device_step``) the loss stays on the device and is read only when it is shown
or logged; the one check a step is the gradient's, after the exchange.

One step, with the rule's hooks (``sync/rule.py``)::

    loss = rule.agree_loss(model.forward_loss(x, y))      # NaN on all workers if on any
    model.backward(rule.backward_hook); rule.after_backward(model, step)
    if rule.agree_finite(gradient is finite): optimizer.step(params, grads, schedule.lr_at(t))
    rule.after_update(model, step)

A non-finite loss or gradient stops the run naming the step (``on_nonfinite: stop``) or skips
the step with the batch's BatchNorm statistics dropped (``skip``); non-finite parameters always
stop it. The time of each phase goes to the run log; the display shows progress.
"""
import os
import time

import numpy as np

from core.device import feed
from core.metrics import topk_correct
from engine.checkpoint import export_weights
from engine.stopping import NAMES, resume_command


class NonFiniteLoss(RuntimeError):
    """The training loss, the gradient or the parameters became NaN or infinite (with
    ``on_nonfinite: stop``; parameters always stop the run)."""


class Progress:
    """Where the run is: steps done, the last finite loss, steps skipped for a bad loss, and
    its clock: seconds of the run before this session (``elapsed``) and seconds spent
    validating, so that a validation's ``train_time`` leaves validations out."""

    def __init__(self, total_steps, steps_per_epoch):
        self.total_steps, self.steps_per_epoch = total_steps, steps_per_epoch
        self.step, self.last_finite, self.skipped = 0, None, 0
        self.elapsed = self.validating = 0.0
        self.origin = None        # perf_counter() at the run's start, this session's count
        self.log_clock = None     # the log's clock (a callable), which checkpoints keep too
        self.log_elapsed = 0.0    # its reading at the checkpoint this session resumed from

    def clock(self):
        """Seconds of the run so far, earlier sessions included (for checkpoints)."""
        return self.elapsed if self.origin is None else time.perf_counter() - self.origin

    def eval_steps(self, eval_every):
        """Steps between validations for ``eval_every`` epochs (at least one)."""
        return max(1, round(eval_every * self.steps_per_epoch))


def all_finite(buffer):
    """No NaN or infinity in ``buffer`` (one float64 sum, no temporary array)."""
    return bool(np.isfinite(np.sum(buffer, dtype=np.float64)))


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


class Stopping(Exception):
    """The workers agreed to stop after this step (a stop signal, engine/stopping.py):
    ``code`` is the exit status, ``step`` the step that names the checkpoint."""

    def __init__(self, code, step):
        super().__init__(f"stopping with status {code} at step {step}")
        self.code, self.step = code, step


def check_stop(run, collective=None):
    """Raise ``Stopping`` if the workers stop here: at a step boundary (``collective`` None)
    or, before a collective of the workers (True/False: whether one follows), at their
    meeting (sync/stop.py)."""
    agreement, code, step = run.rule.stop, run.signals.code, run.progress.step
    with run.log.phase("exchange"):           # a wait for the others: the watchdog's to see
        stop = agreement.boundary(code, step) if collective is None else \
            agreement.meet(code, step, collective)
    if stop[0]:
        raise Stopping(*stop)


def run_epochs(run):
    """A worker's training from where ``run.progress`` is to the end: epochs, validations,
    checkpoints, the rule's finish and the exported weights; returns the validation history
    (and on a stop signal, the stop: ``stop_run``)."""
    progress, rule, cfg = run.progress, run.rule, run.cfg
    history = []
    start = progress.origin = time.perf_counter() - progress.elapsed
    every = progress.eval_steps(cfg["eval_every"])
    minutes = bool(cfg["checkpoint"]["every_minutes"])

    def due(epoch):           # after a step: validate if one is due (never after the last)
        if progress.step % every == 0 and progress.step < progress.total_steps:
            check_stop(run, collective=rule.synchronous)
            validate(run, epoch, history, start)
    with np.errstate(over="ignore", invalid="ignore"):   # a non-finite loss is reported
        epoch = max(1, -(-progress.step // progress.steps_per_epoch))   # a finished run's last
        batches = feed(run.model.xp, run.data.train.stream(
            progress.step // progress.steps_per_epoch,
            start=progress.step % progress.steps_per_epoch))
        try:
            while progress.step < progress.total_steps:
                epoch = progress.step // progress.steps_per_epoch + 1
                train_epoch(run, batches, epoch, due)
                end_of_epoch = progress.step % progress.steps_per_epoch == 0
                last = progress.step == progress.total_steps
                if end_of_epoch:
                    due(epoch)
                if end_of_epoch or last:
                    check_stop(run, collective=rule.synchronous or minutes)
                    run.checkpoints.maybe_save(epoch, run.display.message, last=last)
        except Stopping as stop:
            return stop_run(run, stop, epoch, history)
        finally:
            batches.close()
        rule.finish(run.model)
        validate(run, epoch, history, start)   # the final model, after the last exchange
    if cfg["log"]["export"]:
        with rule.evaluated(run.model):          # the model users care about
            if rule.reports:
                export_weights(run.folder / "weights.hkl", run.model)
    return history


def stop_run(run, stop, epoch, history):
    """The workers stop: a checkpoint named by ``stop.step`` (written even where checkpoints
    are off), the rule's finish, every worker waiting for the others, then one line on the
    first worker with the checkpoint and the command that resumes the run."""
    rule, progress = run.rule, run.progress
    folder = run.checkpoints.save(epoch, run.display.message, name_step=stop.step)
    rule.finish(run.model)
    rule.stop.end()
    run.stopped = stop.code
    if rule.reports:
        where = f"checkpoint {folder}" if folder else \
            "its checkpoint could not be written (see above)"
        command = resume_command(run.folder, launcher=os.environ.get("PT_LAUNCH"),
                                 ranks=run.world.size)
        run.display.message(f"stopped by {NAMES[stop.code]} after step {progress.step} of "
                            f"{progress.total_steps} (epoch {epoch}); {where}; resume with: "
                            f"{command}")
    return history


def validate(run, epoch, history, start):
    """Evaluate the model users care about; record and show the result where it is known."""
    progress, tick = run.progress, time.perf_counter()
    with run.rule.evaluated(run.model):
        metrics = evaluate(run.model, run.data.val, run.rule) if run.rule.evaluates else None
    progress.validating += time.perf_counter() - tick
    if metrics is None:
        return
    now = time.perf_counter() - start
    metrics.update(epoch=epoch, step=progress.step, train_loss=progress.last_finite,
                   time=now, train_time=now - progress.validating)
    history.append(metrics)
    run.log.metrics(metrics)
    run.display.message(f"epoch {epoch} val loss {metrics['loss']:.4f} top1 "
                        f"{metrics['top1']:.4f} top5 {metrics['top5']:.4f} "
                        f"({metrics['time']:.1f} s)")


def train_epoch(run, batches, epoch, due=lambda epoch: None):
    """What is left of epoch ``epoch`` (or of the run), from the loader's stream ``batches``;
    every ``log.every`` steps a log line, and the display is updated; ``due(epoch)`` after
    every step but the epoch's last (validations within an epoch)."""
    progress, log, display = run.progress, run.log, run.display
    display.start_epoch(epoch, progress.steps_per_epoch)
    end = min(epoch * progress.steps_per_epoch, progress.total_steps)
    slow = slowdown(run)
    try:
        while progress.step < end:
            with log.phase("data") as waited:
                x, y = next(batches)
            lr = run.schedule.lr_at(progress.step / progress.steps_per_epoch)
            lazy, tick = reads_lazily(run), time.perf_counter()
            loss = device_step(run, x, y, lr, epoch) if lazy else step(run, x, y, lr, epoch)
            if slow:
                time.sleep(slow * (time.perf_counter() - tick))
            if loss is not None:              # None: skipped (a non-finite loss or gradient)
                if lazy and read_now(run, end):
                    loss = read_loss(run, loss, epoch)
                display.step(epoch, progress.step, loss, lr, len(x), waited.seconds)
                if progress.step % log.every == 0:
                    log.step({"step": progress.step, "epoch": epoch, "loss": loss, "lr": lr,
                              "images": len(x) * log.every})
            check_stop(run)
            if progress.step < end:
                due(epoch)
    finally:
        display.end_epoch()


def slowdown(run):
    """Seconds to sleep per second of step on this rank (``slowdown``: one rank, a slower
    host, for benchmarks): factor - 1 on ``slowdown.rank``, else 0."""
    cfg = run.cfg["slowdown"]
    return cfg["factor"] - 1 if cfg["rank"] == run.world.rank else 0.0


def reads_lazily(run):
    """Whether steps leave the loss where it was computed: on the GPU (reading it there makes
    the host wait for the device)."""
    return run.model.xp is not np


def read_now(run, end):
    """Whether this step's loss is shown or logged (on the GPU it is read only then)."""
    at = run.progress.step
    return at % run.cfg["print_every"] == 0 or at % run.log.every == 0 or at == end


def read_loss(run, loss, epoch):
    """A device step's loss, read on the host (the host waits for the GPU here), and the
    parameters' check that a device step leaves for this moment."""
    loss, progress = float(loss), run.progress
    if not (np.isfinite(loss) and all_finite(run.model.params)):
        raise NonFiniteLoss(f"the loss ({loss}) or the parameters became non-finite by step "
                            f"{progress.step} (epoch {epoch}); last finite loss read: "
                            f"{progress.last_finite}")
    progress.last_finite = loss
    return loss


def step(run, x, y, lr, epoch):
    """One training step on the batch ``(x, y)`` at learning rate ``lr``; its loss, or None
    when the step was skipped (``on_nonfinite: skip``)."""
    model, rule, log, progress = run.model, run.rule, run.log, run.progress
    saved = {k: v.copy() for k, v in model.state().items()} \
        if run.cfg["on_nonfinite"] == "skip" else None
    k = run.cfg["accumulate"]
    with log.phase("compute"):
        loss = float(model.forward_loss(x, y)[0]) if k == 1 else accumulate(run, x, y, k)
    with log.phase("exchange"):
        loss = rule.agree_loss(loss)
    progress.step += 1
    if not np.isfinite(loss):
        before = "no finite loss yet" if progress.last_finite is None else \
            f"last finite loss: {progress.last_finite}"
        return skip(run, saved, f"loss became {loss} at step {progress.step} (epoch {epoch}); "
                                f"{before}")
    progress.last_finite = loss
    if k == 1:
        with log.phase("compute"):
            model.backward(rule.backward_hook, input_grad=False)
    with log.phase("exchange"):
        rule.after_backward(model, progress.step)
        finite = rule.agree_finite(all_finite(model.grads))
    if not finite:                           # caught before it reaches the parameters
        return skip(run, saved, f"the gradient became non-finite at step {progress.step} "
                                f"(epoch {epoch}, after the {rule.name} exchange); loss {loss}")
    with log.phase("compute"):
        run.optimizer.step(model.params, model.grads, lr)
    with log.phase("exchange"):
        rule.after_update(model, progress.step)
    if not all_finite(model.params):
        raise NonFiniteLoss(f"the parameters became non-finite at step {progress.step} "
                            f"(epoch {epoch}) after the update and the {rule.name} exchange")
    return loss


def device_step(run, x, y, lr, epoch):
    """``step`` on the GPU, where each value read on the host makes it wait for the device:
    the loss stays there (read when shown, ``read_loss``), and one check a step, the
    gradient's after the exchange, stands for the loss's too (a non-finite loss makes a
    non-finite gradient, and the exchange hands it to every worker); the parameters are
    checked when the loss is read. Returns the loss as a device scalar, or None (skipped)."""
    model, rule, log, progress = run.model, run.rule, run.log, run.progress
    saved = {k: v.copy() for k, v in model.state().items()} \
        if run.cfg["on_nonfinite"] == "skip" else None
    k = run.cfg["accumulate"]
    with log.phase("compute"):
        if k == 1:
            loss = model.forward_loss(x, y)[0]
            model.backward(rule.backward_hook, input_grad=False)
        else:
            loss = accumulate(run, x, y, k)
    progress.step += 1
    with log.phase("exchange"):
        rule.after_backward(model, progress.step)
        finite = rule.agree_finite(all_finite(model.grads))
    if not finite:
        return skip(run, saved, f"the loss or the gradient became non-finite at step "
                                f"{progress.step} (epoch {epoch}, after the {rule.name} "
                                f"exchange)")
    with log.phase("compute"):
        run.optimizer.step(model.params, model.grads, lr)
    with log.phase("exchange"):
        rule.after_update(model, progress.step)
    return loss


def accumulate(run, x, y, k):
    """Forward and backward of the k micro-batches of ``(x, y)``; the model's gradient is left
    as their mean (the gradient of the whole batch's mean loss); returns the mean loss. Each
    micro-batch's BatchNorm uses its own statistics (its running statistics move k times)."""
    model, b = run.model, len(x) // k
    total, losses = run.accumulated, []
    for i in range(k):               # the losses as they come: device scalars on the GPU
        losses.append(model.forward_loss(x[i * b:(i + 1) * b], y[i * b:(i + 1) * b])[0])
        model.backward(input_grad=False)
        if i == 0:
            total[...] = model.grads
        else:
            total += model.grads
    model.xp.multiply(total, 1.0 / k, out=model.grads)
    loss = sum(losses) / k
    return float(loss) if model.xp is np else loss


def skip(run, saved, problem):
    """Stop the run with ``problem`` (``on_nonfinite: stop``), or drop the step: the bad
    batch's BatchNorm statistics are restored from ``saved``."""
    if saved is None:
        raise NonFiniteLoss(problem)
    run.model.load_state(saved)
    run.progress.skipped += 1
    return None
