"""Shared by the sync-rule tests: a tiny learnable job, running it under mpiexec, and the
data and model a one-process reference needs."""
import json

import numpy as np

from data.dataset import build_data
from core.config import load_config
from core.models import build_model
from core.optimizers import build_optimizer
from engine.train import geometry
from tests.mpi import ROOT, run_mpi

COMMON = ["model=mlp", "model_options={hidden: [16]}", "data.dataset=synthetic",
          "data.path=null", "data.num_train=480", "data.num_val=64", "data.image_size=6",
          "data.channels=2", "data.noise=1.0", "optimizer.lr=0.05", "optimizer.momentum=0.9",
          "optimizer.weight_decay=0.001", "lr_schedule.policy=constant", "threads=1",
          "print_every=1000", "seed=3", "epochs=1"]


def run_rule(tmp_path, ranks, settings, timeout=120, faults=(), flags=(), prefix=()):
    """Run the job on ``ranks`` MPI ranks (``faults``: save_params.py's injection options;
    ``flags`` and ``prefix``: see ``run_mpi``); returns (params per rank, summary per rank)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    out = tmp_path / "rank"
    args = [ROOT / "tests" / "sync" / "save_params.py", out]
    for s in COMMON + settings:
        args += ["--set", s]
    done = run_mpi(ranks, args + list(faults), timeout=timeout, flags=flags, prefix=prefix)
    assert done.returncode == 0, done.stdout + done.stderr
    alive = [r for r in range(ranks) if (tmp_path / f"rank.{r}.json").exists()]
    return ([np.load(f"{out}.{r}.npy") if r in alive else None for r in range(ranks)],
            [json.loads((tmp_path / f"rank.{r}.json").read_text()) if r in alive else None
             for r in range(ranks)])


def reference_setup(settings, shards=1, copies=1):
    """(cfg, per-shard data, models, optimizers) for a one-process reference run."""
    cfg = load_config(None, COMMON + settings)
    data = [build_data(cfg, r, shards) for r in range(shards)]
    models = [build_model(cfg["model"], cfg["model_options"], cfg["dtype"], cfg["seed"],
                          geometry=geometry(data[0])) for _ in range(copies)]
    optimizers = [build_optimizer(cfg["optimizer"]) for _ in range(copies)]
    return cfg, data, models, optimizers


def sgd_step(model, optimizer, batch, lr):
    x, y = batch
    model.forward_loss(x, y)
    model.backward()
    optimizer.step(model.params, model.grads, lr=lr)
