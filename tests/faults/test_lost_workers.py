"""Killed, slow and failing ranks: no hangs; asynchronous rules finish without the lost."""
import json
import time

import pytest

from tests.mpi import ROOT, run_mpi
from tests.sync.helpers import COMMON

SAVE = ROOT / "tests" / "sync" / "save_params.py"


def job(tmp_path, settings, faults=()):
    args = [SAVE, tmp_path / "rank"]
    for s in COMMON + settings:
        args += ["--set", s]
    return args + list(faults)


def test_a_rank_killed_in_a_bsp_step_ends_the_job_naming_it(tmp_path):
    tick = time.perf_counter()
    done = run_mpi(2, job(tmp_path, ["batch_size=8", "epochs=20"], ["--die", "1:5"]),
                   timeout=90)
    elapsed = time.perf_counter() - tick
    assert done.returncode != 0
    assert "rank 1" in done.stderr and "signal 9" in done.stderr
    assert elapsed < 60, f"took {elapsed:.1f} s"


@pytest.mark.parametrize("rule", ["EASGD", "DOWNPOUR"])
def test_asynchronous_rules_drop_a_killed_worker_and_finish(tmp_path, rule):
    settings = [f"sync_rule={rule}", "batch_size=16", "epochs=3", "checkpoint.every_epochs=0"]
    done = run_mpi(4, job(tmp_path, settings, ["--die", "3:5"]), timeout=120,
                   flags=["--with-ft", "ulfm"])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "drops worker rank 3: its process died" in done.stderr
    first = json.loads((tmp_path / "rank.1.json").read_text())
    assert first["top1"] > 0.85                       # the final validation ran
    assert not (tmp_path / "rank.3.json").exists()


@pytest.mark.parametrize("rule", ["EASGD", "DOWNPOUR"])
def test_a_hung_worker_is_dropped_told_so_and_the_job_still_ends(tmp_path, rule):
    settings = [f"sync_rule={rule}", "batch_size=16", "epochs=3", "checkpoint.every_epochs=0",
                "worker_timeout=3", "easgd.tau=2"]
    tick = time.perf_counter()
    done = run_mpi(4, job(tmp_path, settings, ["--hang", "3:5"]), timeout=120,
                   flags=["--with-ft", "ulfm"])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "drops worker rank 3: it sent nothing for 3 s" in done.stderr
    assert "rank 3: server rank 0 dropped this worker (silent for 3 s)" in done.stderr
    assert json.loads((tmp_path / "rank.1.json").read_text())["top1"] > 0.85
    assert not (tmp_path / "rank.3.json").exists()
    assert time.perf_counter() - tick < 90


def test_a_straggler_does_not_slow_the_others_under_easgd(tmp_path):
    settings = ["sync_rule=EASGD", "batch_size=16", "epochs=1", "easgd.tau=2"]
    tick = time.perf_counter()
    done = run_mpi(3, job(tmp_path, settings, ["--slow", "1:0.05"]), timeout=120)
    assert done.returncode == 0, done.stderr
    slow = json.loads((tmp_path / "rank.1.json").read_text())
    fast = json.loads((tmp_path / "rank.2.json").read_text())
    # the straggler (the first worker, which also waits for the final center) exchanged as
    # often as the other, every tau steps, but took 15 x 0.05 s longer; the fast worker was
    # not held to its pace
    assert fast["exchanges"] == slow["exchanges"] == 7
    assert fast["seconds"] < slow["seconds"] - 0.6, (fast, slow, time.perf_counter() - tick)


def test_the_watchdog_names_the_rank_that_did_not_reach_the_exchange_then_ends_the_job(
        tmp_path):
    import subprocess
    import sys
    from tests.mpi import mpi_env, mpiexec
    args = job(tmp_path, ["batch_size=8", "epochs=20", "watchdog=1", "stall_abort=6",
                          f"log.dir={tmp_path / 'run'}"], ["--hang", "1:4"])
    command = [mpiexec(), "--oversubscribe", "-n", "2", sys.executable] + [str(a) for a in args]
    tick = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=tmp_path, env=mpi_env(), capture_output=True,
                              text=True, timeout=60)
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"stall_abort did not end the job:\n{err.stderr}")
    stalls = [line for line in done.stderr.splitlines() if line.startswith("stall:")]
    assert len(stalls) == 2 and stalls[0].startswith("stall: rank 0 has waited"), done.stderr
    # the report at 1 s may come before rank 1's first heartbeat; by 6 s it names its phase
    assert "with 4 steps done; ranks not there: 1 (4 steps done, in compute" in stalls[1]
    assert stalls[1].endswith("ending the job (stall_abort: 6 s)")
    assert done.returncode == 6 and time.perf_counter() - tick < 40
