"""Checkpoints of a run, written atomically, kept K deep, and read back to resume.

    RUN/checkpoints/step-00001234/rank0.npz ... rank<n-1>.npz    one per rank
    RUN/checkpoints/step-00001234/manifest.json                  written last, by rank 0

Every rank writes its file to a temporary name and renames it (servers when the first worker
asks them); once all have, the first worker writes the manifest the same way, and only then
removes checkpoints older than the last ``keep``. A
checkpoint without a manifest (a kill or a full disk during the write) is ignored, and the one
before it is still whole. A rank's file holds its parameters, BatchNorm statistics, optimizer
state, the sync rule's state (an EASGD center or a Downpour shard is a server's parameters; its
Adagrad sums are its optimizer state), the position in the data (the step: the loader's order
and augmentation are functions of the seed, epoch and batch), the dropout generators and the
run's clock (seconds so far, and those spent validating), so that a resumed run's times go on.

``fingerprint(cfg, world, model, rule)`` lists what a resumed run must not change (model, parameter
count, ranks, workers, sync rule, dtype); the learning rate or the epochs may change.
"""
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

from layers.backend import copy_into, to_host

MANIFEST = "manifest.json"


class CheckpointError(ValueError):
    """A checkpoint cannot be used; the message names the file and the problem.
    ``setup_differs``: it was written by a run this one may not continue."""

    def __init__(self, message, setup_differs=False):
        super().__init__(message)
        self.setup_differs = setup_differs


def fingerprint(cfg, world, model, rule):
    return {"model": cfg["model"], "model_options": cfg["model_options"],
            "parameters": model.num_params, "dtype": cfg["dtype"], "ranks": world.size,
            "sync_rule": cfg["sync_rule"], "servers": rule.servers}


def _write_atomically(path, write):
    temporary = path.with_name(path.name + ".tmp")
    try:
        write(temporary)
        temporary.replace(path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def rank_state(model, optimizer, rule, progress):
    """The arrays and the JSON-able values that make up this rank's part of a checkpoint."""
    arrays = {"params": model.params}
    arrays.update({f"state/{k}": v for k, v in model.state().items()})
    optimizer_state = optimizer.state_dict()
    arrays.update({f"optimizer/{k}": v for k, v in optimizer_state["buffers"].items()})
    arrays.update({f"rule/{k}": v for k, v in rule.state_dict().items()})
    arrays = {key: to_host(value) for key, value in arrays.items()}   # GPU arrays copied
    values = {"step": progress.step, "last_finite": progress.last_finite,
              "skipped": progress.skipped, "elapsed": progress.clock(),
              "log_time": progress.log_clock() if progress.log_clock else progress.clock(),
              "validating": progress.validating,
              "optimizer": {"name": optimizer_state["name"], "steps": optimizer_state["steps"]},
              "dropout": [layer.rng.bit_generator.state for layer in model.leaves()
                          if hasattr(layer, "reseed")]}
    return arrays, values


def restore(model, optimizer, rule, progress, arrays, values):
    copy_into(model.params, arrays["params"])
    model.load_state({k[len("state/"):]: v for k, v in arrays.items() if k.startswith("state/")})
    optimizer.load_state_dict(dict(values["optimizer"], buffers={
        k[len("optimizer/"):]: v for k, v in arrays.items() if k.startswith("optimizer/")}))
    rule.load_state_dict({k[len("rule/"):]: v for k, v in arrays.items()
                          if k.startswith("rule/")})
    progress.step, progress.last_finite = values["step"], values["last_finite"]
    progress.skipped = values["skipped"]
    # the run's clock goes on from the checkpoint (0 for checkpoints from before 2026-12-06)
    progress.elapsed = values.get("elapsed", 0.0)
    progress.log_elapsed = values.get("log_time", progress.elapsed)
    progress.validating = values.get("validating", 0.0)
    dropouts = [layer for layer in model.leaves() if hasattr(layer, "reseed")]
    for layer, state in zip(dropouts, values["dropout"]):
        layer.rng.bit_generator.state = state


def write_rank(folder, rank, arrays, values):
    """Write one rank's file of a checkpoint (temporary name, fsync, rename)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    payload = dict(arrays, __values__=np.frombuffer(json.dumps(values).encode(), np.uint8))

    def write(path):
        with open(path, "wb") as f:
            np.savez(f, **payload)
            f.flush()
            os.fsync(f.fileno())
    _write_atomically(folder / f"rank{rank}.npz", write)


def write_manifest(folder, manifest):
    """Mark the checkpoint in ``folder`` complete (after every rank's file is written)."""
    _write_atomically(Path(folder) / MANIFEST,
                      lambda p: p.write_text(json.dumps(manifest, indent=1)))


def complete(root):
    """Folders of the checkpoints under ``root`` that have a manifest and every rank's file,
    newest first (asynchronous workers may still be on their way to one)."""
    root = Path(root)
    if not root.is_dir():
        return []

    def whole(folder):
        try:
            ranks = json.loads((folder / MANIFEST).read_text())["ranks"]
        except (OSError, ValueError, KeyError):
            return (folder / MANIFEST).exists()      # unreadable: load() will say so
        return all((folder / f"rank{r}.npz").exists() for r in range(ranks))
    return sorted((p for p in root.glob("step-*") if (p / MANIFEST).exists() and whole(p)),
                  reverse=True)


def load(folder, rank, expected):
    """(arrays, values) of ``rank`` from the checkpoint ``folder``; ``expected`` is this run's
    fingerprint, which must match the checkpoint's."""
    folder = Path(folder)
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{folder / MANIFEST}: missing (an unfinished checkpoint?)") \
            from None
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{folder / MANIFEST}: unreadable: {err}") from None
    differ = [f"{key}: checkpoint {manifest.get(key)!r}, this run {value!r}"
              for key, value in expected.items() if manifest.get(key) != value]
    if differ:
        raise CheckpointError(f"{folder} was written by a different setup; what differs: "
                              + "; ".join(differ), setup_differs=True)
    path = folder / f"rank{rank}.npz"
    try:
        with np.load(path, allow_pickle=False) as stored:
            arrays = {key: stored[key] for key in stored.files}
        values = json.loads(arrays.pop("__values__").tobytes())
        return arrays, values
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing") from None
    except Exception as err:        # a damaged archive fails in many ways inside NumPy
        raise CheckpointError(f"{path}: corrupted or truncated ({type(err).__name__}: "
                              f"{err})") from None


def export_weights(path, model):
    """Write the model's parameters and BatchNorm statistics alone, as a hickle file."""
    import hickle
    data = {"params": to_host(model.params), "model": model.name}
    data.update({f"state/{k}": to_host(v) for k, v in model.state().items()})
    _write_atomically(Path(path), lambda p: hickle.dump(data, str(p), mode="w"))


def import_weights(path, model):
    """Load weights written by ``export_weights`` into ``model`` (same architecture)."""
    import hickle
    try:
        data = hickle.load(str(path))
    except (OSError, ValueError, KeyError) as err:
        raise CheckpointError(f"{path}: cannot read weights: {err}") from None
    if data.get("model") != model.name or data["params"].shape != model.params.shape:
        raise CheckpointError(f"{path}: weights of {data.get('model')!r} with "
                              f"{data['params'].size} parameters; this model is {model.name!r} "
                              f"with {model.num_params}")
    copy_into(model.params, data["params"])
    model.load_state({k[len("state/"):]: v for k, v in data.items() if k.startswith("state/")})


class Checkpoints:
    """A run's checkpointing: when to save, writing this rank's part, resuming."""

    def __init__(self, cfg, world, rule, model, optimizer, progress, folder):
        self.cfg, self.world, self.rule = cfg, world, rule
        self.model, self.optimizer, self.progress = model, optimizer, progress
        self.root = Path(folder) / "checkpoints"
        self.options = cfg["checkpoint"]
        self.fingerprint = fingerprint(cfg, world, model, rule)
        self.last_time = time.monotonic()

    def write_own(self, folder):
        """Write this rank's file into ``folder``; returns None or what went wrong."""
        arrays, values = rank_state(self.model, self.optimizer, self.rule, self.progress)
        try:
            write_rank(folder, self.world.rank, arrays, values)
        except OSError as err:
            return f"rank {self.world.rank}: {folder / f'rank{self.world.rank}.npz'}: {err}"
        return None

    def due(self, epoch, last):
        """Whether to save at the end of ``epoch``: the same answer on every worker (the
        clock of the first worker decides for ``every_minutes``)."""
        every, minutes = self.options["every_epochs"], self.options["every_minutes"]
        if not (every or minutes):
            return False
        due = last or bool(every and epoch % every == 0)
        if minutes and not due:
            due = time.monotonic() - self.last_time >= 60 * minutes
            workers = self.rule.workers
            if workers is not None and self.rule.num_workers > 1:
                due = workers.bcast(due, root=0)
        return due

    def maybe_save(self, epoch, say, last=False):
        """On the workers at the end of an epoch: save if one is due (every rank takes part;
        the rule brings in its servers)."""
        if not self.due(epoch, last):
            return None
        return self.save(epoch, say)

    def save(self, epoch, say, name_step=None):
        """Save a checkpoint now, into ``step-<name_step>`` (default: this worker's step; a
        stop of asynchronous workers names it by the first worker's); returns its folder on
        the first worker when it is whole, else None."""
        step = self.progress.step if name_step is None else name_step
        folder = self.root / f"step-{step:08d}"
        failures = self.rule.save_checkpoint(folder, self.write_own)
        self.last_time = time.monotonic()
        if self.rule.worker_rank != 0:
            return None
        if failures:
            say(f"warning: checkpoint at step {self.progress.step} not written (the previous "
                f"one is intact): {'; '.join(failures)}")
            return None
        write_manifest(folder, dict(self.fingerprint, step=self.progress.step, epoch=epoch))
        for old in complete(self.root)[self.options["keep"]:]:
            shutil.rmtree(old, ignore_errors=True)
        return folder

    def candidates(self):
        wanted = self.cfg["resume"]
        if wanted == "auto":
            return complete(self.root)
        path = Path(wanted)
        if (path / MANIFEST).exists() or not (path / "checkpoints").is_dir():
            return [path]
        return complete(path / "checkpoints")

    def _everyones(self, problem):
        """The problems (not None) of every rank, in rank order."""
        found = self.world.allgather(problem)
        return [p for p in found if p]

    def resume(self, say):
        """Restore the newest usable checkpoint (``resume: auto``) or the one named; every
        rank takes part. Returns its folder, or None when starting fresh."""
        if not self.cfg["resume"]:
            return None
        candidates = self.candidates()
        for i, folder in enumerate(candidates):
            try:
                arrays, values = load(folder, self.world.rank, self.fingerprint)
                problem = None
            except CheckpointError as err:
                problem = (str(err), err.setup_differs)
            problems = self._everyones(problem)
            if not problems:
                try:
                    restore(self.model, self.optimizer, self.rule, self.progress, arrays,
                            values)
                    problem = None
                except ValueError as err:        # arrays that do not fit this setup
                    problem = f"{folder}: cannot restore rank {self.world.rank}: {err}"
                failed = self._everyones(problem)
                if failed:
                    raise CheckpointError(failed[0])
                say(f"resumed from {folder} (step {self.progress.step})")
                return folder
            message, setup_differs = problems[0]
            if setup_differs or self.cfg["resume"] != "auto":
                raise CheckpointError(message)
            following = candidates[i + 1] if i + 1 < len(candidates) else None
            say(f"warning: {message}; falling back to "
                f"{following if following is not None else 'a fresh start'}")
        if self.cfg["resume"] != "auto":
            raise CheckpointError(f"{self.cfg['resume']}: no checkpoint there")
        say(f"no checkpoint in {self.root}; starting fresh")
        return None
