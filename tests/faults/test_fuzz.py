"""Fuzzing the entry points: mutated configs and damaged dataset and checkpoint files must end
in a clear error or a correct run, never a traceback or a hang.

The seed and the sizes come from the environment so a failure reproduces and a nightly run can
be longer: FUZZ_SEED (default 20261126), FUZZ_CONFIGS (500), FUZZ_FILES (100).
"""
import contextlib
import copy
import io
import os
import random
import shutil

import pytest
import yaml

from data.prepare import main as prepare
from core.config import SCHEMA
from engine.train import main as train_main

SEED = int(os.environ.get("FUZZ_SEED", "20261126"))
CONFIGS = int(os.environ.get("FUZZ_CONFIGS", "500"))
FILES = int(os.environ.get("FUZZ_FILES", "100"))
CLEAR = {0: "", 1: "training stopped", 2: "config error", 3: "data error",
         4: "checkpoint error", 5: "out of memory"}

BASE = {"model": "mlp", "model_options": {"hidden": [8]}, "batch_size": 16, "epochs": 1,
        "max_steps": 2, "threads": 1, "print_every": 1000, "seed": 1,
        "data": {"dataset": "synthetic", "num_train": 64, "num_val": 32, "image_size": 6,
                 "channels": 1, "prefetch": 1},
        "log": {"export": False, "every": 1, "bar": False}, "checkpoint": {"every_epochs": 0}}

# Kept short whatever a case says.
CAPS = ["--set", "max_steps=2", "--set", "data.num_val=32", "--set", "threads=1"]

ODD_VALUES = ["abc", "", [1, 2], {"a": 1}, None, True, False, 3.5, -7, 0, 1, 10 ** 12,
              10 ** 30, -1e308, 1e308, ".nan", "1e-3", "auto", "null", [None], {"": None}]


def leaf_paths(schema, prefix=()):
    for key, node in schema.items():
        yield prefix + (key,)
        if isinstance(node, dict):
            yield from leaf_paths(node, prefix + (key,))


def mutate(rng, config):
    """One random change: a key removed, given an odd value, a section made a scalar, an
    unknown key added, or the whole document replaced."""
    paths = list(leaf_paths(SCHEMA))
    kind = rng.choice(["odd", "odd", "odd", "remove", "unknown", "document"])
    if kind == "document":
        return rng.choice([[1, 2], "just text", 42, "{unbalanced: [", "a: b: c", "\t tab: 1",
                           "- - -", "data: &x [*x]", "model: mlp\nmodel: mlp"])
    path = rng.choice(paths)
    node = config
    for key in path[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    if kind == "odd":
        node[path[-1]] = copy.deepcopy(rng.choice(ODD_VALUES))
    elif kind == "remove":
        node.pop(path[-1], None)
    else:
        node[path[-1] + rng.choice(["_", "x", "s"])] = 1
    return config


def run_main(args):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = train_main(args)
    return code, out.getvalue(), err.getvalue()


def test_mutated_configs_end_in_a_clear_error_or_a_run(tmp_path):
    rng = random.Random(SEED)
    codes = {}
    for case in range(CONFIGS):
        document = mutate(rng, copy.deepcopy(BASE))
        path = tmp_path / f"case{case}.yaml"
        path.write_text(document if isinstance(document, str) else yaml.safe_dump(document))
        code, out, err = run_main([str(path)] + CAPS)
        assert code in CLEAR, f"case {case} (seed {SEED}): exit {code}\n{path.read_text()}"
        assert err.startswith(CLEAR[code]) if code else "final: top1" in out, \
            f"case {case} (seed {SEED}): {err or out}\n{path.read_text()}"
        codes[code] = codes.get(code, 0) + 1
    assert codes.get(0, 0) > CONFIGS // 10 and codes.get(2, 0) > CONFIGS // 4, codes


@pytest.fixture
def pristine(tmp_path_factory):
    """A tiny prepared dataset and a run folder with a checkpoint of training on it."""
    root = tmp_path_factory.mktemp("pristine")
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert prepare(["synthetic", str(root / "data"), "--train-batches", "3",
                        "--val-batches", "1", "--batch-size", "8", "--image-size", "8",
                        "--channels", "1", "--classes", "3", "--workers", "1"]) == 0
    config = dict(copy.deepcopy(BASE), data={"dataset": "prepared", "path": str(root / "data"),
                                            "prefetch": 1},
                  checkpoint={"every_epochs": 1}, log={"dir": str(root / "run"),
                                                       "export": False, "bar": False})
    (root / "run.yaml").write_text(yaml.safe_dump(config))
    code, _, err = run_main([str(root / "run.yaml")])
    assert code == 0, err
    return root


def damage(rng, path):
    data = path.read_bytes()
    kind = rng.choice(["truncate", "flip", "garbage", "empty", "delete"])
    if kind == "truncate":
        path.write_bytes(data[:rng.randrange(max(1, len(data)))])
    elif kind == "flip":
        data = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        path.write_bytes(bytes(data))
    elif kind == "garbage":
        path.write_bytes(bytes(rng.randrange(256) for _ in range(rng.randint(1, 4096))))
    elif kind == "empty":
        path.write_bytes(b"")
    else:
        path.unlink()
    return kind


def test_damaged_batch_label_mean_and_checkpoint_files_are_refused_cleanly(pristine, tmp_path):
    rng = random.Random(SEED + 1)
    codes = {}
    for case in range(FILES):
        work = tmp_path / f"case{case}"
        shutil.copytree(pristine, work)
        config = yaml.safe_load((work / "run.yaml").read_text())
        config["data"]["path"] = str(work / "data")
        config["log"]["dir"] = str(work / "run")
        config["resume"] = str(work / "run")
        config["epochs"], config["max_steps"] = 2, None
        (work / "run.yaml").write_text(yaml.safe_dump(config))
        targets = sorted(p for p in (work / "data").rglob("*") if p.is_file()) + \
            sorted((work / "run" / "checkpoints").rglob("*.*"))
        target = rng.choice(targets)
        kind = damage(rng, target)
        code, out, err = run_main([str(work / "run.yaml")])
        what = f"case {case} (seed {SEED + 1}): {kind} {target.relative_to(work)}"
        assert code in CLEAR and (err.startswith(CLEAR[code]) if code else "final:" in out), \
            f"{what}: exit {code}\n{err or out}"
        codes[code] = codes.get(code, 0) + 1
        shutil.rmtree(work)
    assert codes.get(3, 0) + codes.get(4, 0) > FILES // 3, codes
