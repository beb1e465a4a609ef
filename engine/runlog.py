"""The run folder (``log.dir``): what a run did, readable with ``jq`` and by ``engine.report``.

    RUN/metadata.json        resolved config, versions, MPI library, each rank's role, host
                             and threads, device, start time, git revision
    RUN/log.rank<r>.jsonl    one line per logged step: step, epoch, loss, lr, images/s and the
                             seconds spent computing, exchanging and waiting for data
    RUN/metrics.jsonl        validation results of the model users care about (top-1, top-5,
                             loss), one line per evaluation, from the reporting worker
    RUN/timeline.rank<r>.json  with ``timeline: true``: Chrome trace events (compute, exchange,
                             data wait, server service), for chrome://tracing or Perfetto
    RUN/checkpoints/         see engine/checkpoint.py

Rank 0 chooses the folder (``runs/<date>-<time>-<rule>`` unless ``log.dir`` names one) and
tells the others.
"""
import contextlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from core.config import dump

from core.errors import ConfigError
from engine.version import source_fingerprint


def git_revision(root):
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() + ("+dirty" if dirty else "")) if out.returncode == 0 else None


def versions():
    found = {"parallel-training": source_fingerprint(), "python": platform.python_version(),
             "numpy": np.__version__}
    for name in ("mpi4py", "h5py", "hickle", "yaml", "cupy"):
        module = sys.modules.get(name)
        if module is not None:
            found[name] = getattr(module, "__version__", "?")
    return found


def run_folder(cfg, world):
    """The run's folder, chosen on rank 0 and shared; created there."""
    name, problem = None, None
    if world.rank == 0:
        name = cfg["log"]["dir"] or os.path.join(
            "runs", time.strftime("%Y%m%d-%H%M%S") + f"-{cfg['sync_rule'].lower()}")
        try:
            Path(name).mkdir(parents=True, exist_ok=True)
            probe = Path(name) / ".writable"
            probe.touch()
            probe.unlink()
        except OSError as err:
            problem = f"log.dir: cannot write the run folder {name}: {err}"
    name, problem = world.bcast((name, problem))
    if problem:
        raise ConfigError(problem)
    return Path(name).absolute()


class Timing:
    seconds = 0.0


class RunLog:
    """This rank's writers into the run folder; ``phase(name)`` times a part of a step."""

    def __init__(self, cfg, world, rule, folder):
        self.cfg, self.world, self.rule, self.folder = cfg, world, rule, Path(folder)
        self.every = cfg["log"]["every"]
        self._steps = open(self.folder / f"log.rank{world.rank}.jsonl", "a")
        self._metrics = open(self.folder / "metrics.jsonl", "a") if rule.reports else None
        self._events = [] if cfg["timeline"] else None
        self.times = dict.fromkeys(("compute", "exchange", "data"), 0.0)
        self.origin = time.perf_counter()
        self.current = ("starting", time.time())     # the phase now and since when (watchdog)

    def write_metadata(self, model, description, ranks, steps_per_epoch, extra=None):
        """``ranks``: {"roles", "hosts", "threads"}, each a sequence with one entry per rank;
        ``extra``: more entries (the MPI library's CUDA-awareness on a GPU, the C kernels in
        use on the CPU)."""
        meta = {"config": json.loads(json.dumps(self.cfg, default=str)),
                "config_yaml": dump(self.cfg), "versions": versions(),
                "mpi": self._mpi_library(), "ranks": self.world.size,
                **{key: list(values) for key, values in ranks.items()},
                "workers": self.rule.num_workers, "sync_rule": self.rule.name,
                "device": self.cfg["device"], "model": model.name,
                "parameters": model.num_params, "data": description,
                "steps_per_epoch": steps_per_epoch,
                "start": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "git": git_revision(Path(__file__).resolve().parents[1]), **(extra or {})}
        path = self.folder / "metadata.json"
        path.write_text(json.dumps(meta, indent=1))

    def _mpi_library(self):
        if self.world.comm is None:
            return None
        return self.world.MPI.Get_library_version().splitlines()[0].strip()

    @contextlib.contextmanager
    def phase(self, name, category=None):
        """Time the enclosed code as ``name`` (compute, exchange, data or another); the
        ``Timing`` it yields holds the seconds once the block is done."""
        start, timing, outer = time.perf_counter(), Timing(), self.current
        self.current = (name, time.time())
        try:
            yield timing
        finally:
            end = time.perf_counter()
            self.current = outer if outer[0] != "starting" else ("between phases", time.time())
            timing.seconds = end - start
            if name in self.times:
                self.times[name] += end - start
            if self._events is not None:
                self._events.append({"name": name, "cat": category or name, "ph": "X",
                                     "ts": (start - self.origin) * 1e6,
                                     "dur": (end - start) * 1e6, "pid": self.world.rank,
                                     "tid": 0})

    def clock(self):
        """Seconds on the log's clock (the ``time`` of a step's record)."""
        return time.perf_counter() - self.origin

    def step(self, record):
        """Log a step's record with the seconds since the start and the phase times since
        the last logged step."""
        record["time"] = round(time.perf_counter() - self.origin, 3)
        record.update({f"{k}_s": round(v, 6) for k, v in self.times.items()})
        self._steps.write(json.dumps(record) + "\n")
        self._steps.flush()
        self.times = dict.fromkeys(self.times, 0.0)

    def metrics(self, record):
        if self._metrics is not None:
            self._metrics.write(json.dumps(record) + "\n")
            self._metrics.flush()

    def close(self):
        self._steps.close()
        if self._metrics is not None:
            self._metrics.close()
        if self._events is not None:
            trace = {"traceEvents": [{"name": "process_name", "ph": "M", "pid": self.world.rank,
                                      "args": {"name": f"rank {self.world.rank} "
                                                       f"({'server' if self.rule.is_server else 'worker'})"}}]
                     + self._events, "displayTimeUnit": "ms"}
            (self.folder / f"timeline.rank{self.world.rank}.json").write_text(json.dumps(trace))
