"""The run/ launchers, started as Theano-MPI users do (./run_bsp.sh N) from the repository
root, as well as from run/."""
import subprocess

import pytest

from tests.mpi import ROOT, mpi_env, mpiexec
from tests.sync.helpers import COMMON


@pytest.mark.parametrize("rule", ["bsp", "easgd", "downpour", "gossip"])
def test_every_launcher_answers_from_the_repository_root(rule):
    done = subprocess.run([f"./run_{rule}.sh", "0"], cwd=ROOT, capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 2
    assert done.stderr.splitlines()[:2] == [
        "N must be at least 1, got 0",
        f"usage: run_{rule}.sh N [config.yaml] [--set key=value ...]"]


def test_a_bsp_job_runs_from_the_repository_root(tmp_path):
    mpiexec()
    sets = [a for s in COMMON + ["max_steps=4", f"log.dir={tmp_path / 'run'}"]
            for a in ("--set", s)]
    done = subprocess.run(["./run_bsp.sh", "2", *sets], cwd=ROOT, capture_output=True,
                          text=True, env=mpi_env(), timeout=120)
    assert done.returncode == 0, done.stderr
    assert "BSP over 2 worker(s)" in done.stdout and "final: top1" in done.stdout
