"""The batch scripts under a real single-node Slurm (slurm_cluster.py starts one; the module
is skipped, with the reason, where that cannot be done): every run/slurm_*.sbatch runs a short
job; a job with a 1-minute limit and an early warning signal checkpoints, requeues itself,
resumes and finishes; scancel leaves no rank behind.

Jobs are submitted from a temporary folder (their output and default run folder,
runs/slurm-<job id>, land there) with PT_ROOT naming the project, as a user outside the
project folder would."""
import re
import sys
import time
from pathlib import Path

import pytest

from tests.mpi import ROOT, mpi_env, processes_with
from tests.multihost.slurm_cluster import SlurmCluster, SlurmUnavailable
from tests.sync.helpers import COMMON

TWO_TASKS = ["--nodes=1", "--ntasks=2", "--ntasks-per-node=2", "--cpus-per-task=1"]
SHORT = COMMON + ["batch_size=8", "max_steps=40"]
# about 60 s of steps here (BSP; rank 0 takes 20 times as long per step, and rank 1 waits)
LONG = COMMON + ["batch_size=8", "epochs=1000", "max_steps=5000", "print_every=500",
                 "slowdown={rank: 0, factor: 20}"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    folder = tmp_path_factory.mktemp("slurm")
    started = SlurmCluster(folder)
    try:
        started.start()
    except SlurmUnavailable as err:
        started.stop()
        pytest.skip(f"no Slurm cluster here: {err}")
    yield started
    started.stop()


def submit(cluster, script, folder, settings, options=()):
    """sbatch ``run/<script>`` from ``folder`` with ``settings`` (--set's); the job id."""
    folder.mkdir(parents=True, exist_ok=True)
    sets = [a for s in settings for a in ("--set", s)]
    env = dict(mpi_env(), PT_ROOT=str(ROOT),       # this python3 and its mpiexec first
               PATH=f"{Path(sys.executable).parent}:{mpi_env()['PATH']}")
    return cluster.run("sbatch", "--parsable", *TWO_TASKS, f"--output={folder}/%x-%j.out",
                       *options, ROOT / "run" / script, *sets, cwd=folder, env=env).strip()


def output(folder, job):
    return next(folder.glob(f"*-{job}.out")).read_text()


@pytest.mark.parametrize("script", ["slurm_bsp.sbatch", "slurm_easgd.sbatch",
                                    "slurm_downpour.sbatch", "slurm_gossip.sbatch"])
def test_every_batch_script_runs_a_short_job(cluster, tmp_path, script):
    job = submit(cluster, script, tmp_path, SHORT)
    record = cluster.wait(job, timeout=180)
    text = output(tmp_path, job)
    assert (record["JobState"], record["ExitCode"]) == ("COMPLETED", "0:0"), text
    assert "2 ranks on 1 node(s)" in text and "final: top1" in text
    assert f"run folder runs/slurm-{job}" in text
    assert (tmp_path / "runs" / f"slurm-{job}" / "weights.hkl").exists()


def test_the_warning_before_the_limit_checkpoints_requeues_and_the_job_resumes_to_the_end(
        cluster, tmp_path):
    # a 1-minute limit, the warning 25 s before it: Slurm checks limits every 30 s and sends
    # a warning up to 30 s early, so it comes 5 to 35 s into each run
    job = submit(cluster, "slurm_bsp.sbatch", tmp_path, LONG + ["cluster.requeue=true"],
                 options=["--time=1", "--signal=B:USR1@25"])
    deadline = time.monotonic() + 400
    while (record := cluster.job(job)).get("JobState") not in ("COMPLETED", "FAILED",
                                                                "CANCELLED", "TIMEOUT"):
        assert time.monotonic() < deadline, record
        if record.get("Reason") == "BeginTime":
            # Slurm holds a requeued job 2 minutes; a few seconds suffice here (slurmd
            # refuses a job started within the second its previous run was revoked)
            time.sleep(3)
            cluster.run("scontrol", "update", f"JobId={job}", "StartTime=now", check=False)
        time.sleep(1)
    text = output(tmp_path, job)
    assert (record["JobState"], record["ExitCode"]) == ("COMPLETED", "0:0"), text
    assert int(record["Restarts"]) >= 1, text
    stops = [int(s) for s in re.findall(r"stopped by SIGTERM after step (\d+) of 5000", text)]
    assert stops and stops == sorted(stops) and stops[-1] < 5000, text
    assert "Slurm's warning signal: requeueing job" in text
    assert "requeued (restart 1): resuming from runs/slurm-" in text
    resumed = re.findall(r"resumed from \S+/checkpoints/step-(\d+) \(step (\d+)\)", text)
    assert [int(s) for s, _ in resumed][-1] == stops[-1], text
    assert re.search(r"final: top1 \S+ top5 \S+ after 5000 steps", text), text


def test_scancel_leaves_no_rank_behind(cluster, tmp_path):
    folder = tmp_path / "run-to-cancel"
    job = submit(cluster, "slurm_gossip.sbatch", tmp_path, LONG + [f"log.dir={folder}"])
    deadline = time.monotonic() + 120
    while not (folder / "log.rank1.jsonl").exists():      # both ranks are training
        assert time.monotonic() < deadline, cluster.job(job)
        time.sleep(0.5)
    assert len(processes_with(folder)) >= 2
    cluster.run("scancel", job)
    record = cluster.wait(job, timeout=60)
    assert record["JobState"] == "CANCELLED"
    deadline = time.monotonic() + 30
    while processes_with(folder):
        assert time.monotonic() < deadline, f"left behind: {processes_with(folder)}"
        time.sleep(0.5)
    assert "Slurm's warning signal: requeueing" not in output(tmp_path, job)
