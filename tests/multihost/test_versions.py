"""Ranks running different checkouts of the project (as two hosts with different versions
would) stop at start with both versions named, before any training."""
import shutil
import subprocess
import sys

import pytest

from engine.version import PACKAGES, source_fingerprint
from tests.mpi import ROOT, mpi_env, mpiexec
from tests.sync.helpers import COMMON


def test_ranks_with_different_code_stop_with_both_versions(tmp_path):
    copy = tmp_path / "other-checkout"
    for package in PACKAGES:
        shutil.copytree(ROOT / package, copy / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    with open(copy / "layers" / "relu.py", "a") as f:
        f.write("# changed on the other host\n")
    sets = [a for s in COMMON + ["max_steps=2", f"log.dir={tmp_path / 'run'}"]
            for a in ("--set", s)]
    config = tmp_path / "config.yaml"
    config.write_text("sync_rule: BSP\n")
    job = [sys.executable, "-m", "engine.train", config, *sets]
    command = [mpiexec(), "--oversubscribe", "-n", "1", "--wdir", ROOT, *job, ":",
               "-n", "1", "--wdir", copy, *job]
    try:
        done = subprocess.run(list(map(str, command)), env=mpi_env(), capture_output=True,
                              text=True, timeout=90)
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"the mismatched ranks did not stop in 90 s:\n{err.stdout}\n{err.stderr}")
    assert done.returncode == 2, done.stdout + done.stderr
    ours = source_fingerprint()
    assert "rank 1 on host" in done.stderr and f"(rank 0: {ours})" in done.stderr
    assert "disagrees with rank 0 on host" in done.stderr and "version 0.1.0+" in done.stderr
    assert "every host needs the same checkout" in done.stderr
    assert not (tmp_path / "run").exists()            # stopped before the run folder
