"""The Slurm batch scripts (run/slurm_*.sbatch) and GPU binding (run/bind_gpu.sh), run here
as Slurm would run them: inside a faked allocation (SLURM_* variables, an srun stand-in that
starts the tasks with mpiexec)."""
import os
import subprocess
from pathlib import Path

import pytest

from tests.mpi import ROOT, mpi_env
from tests.sync.helpers import COMMON

SCRIPTS = sorted((ROOT / "run").glob("slurm_*.sbatch"))
SBATCH_OPTIONS = {"job-name", "nodes", "ntasks", "ntasks-per-node", "cpus-per-task", "time",
                  "output", "gpus-per-task", "signal", "requeue", "open-mode"}


def directives(path):
    """(#SBATCH options, in order) as sbatch reads them: only before the first command."""
    found = []
    for line in path.read_text().splitlines()[1:]:
        if line.startswith("#SBATCH"):
            found.append(line.split()[1])
        elif line.strip() and not line.startswith("#"):
            break
    return found, path.read_text().count("\n#SBATCH")


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_every_directive_is_read_by_sbatch_and_known(script):
    found, written = directives(script)
    assert len(found) == written                     # none after the first command
    names = {option[2:].split("=")[0] for option in found}
    assert names <= SBATCH_OPTIONS and {"job-name", "time", "output", "signal",
                                        "requeue"} <= names
    assert names & {"ntasks", "ntasks-per-node"}


def test_one_script_per_rule():
    assert [p.name for p in SCRIPTS] == ["slurm_bsp.sbatch", "slurm_downpour.sbatch",
                                         "slurm_easgd.sbatch", "slurm_gossip.sbatch"]


def submit(script, tmp_path, tasks, launcher, extra=()):
    """Run ``script`` as sbatch would, in a faked allocation of ``tasks`` tasks."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    srun = bin_dir / "srun"               # Slurm's srun, played by mpiexec; logs its options
    srun.write_text(f'#!/bin/sh\necho "$@" > {tmp_path}/srun.args\n'
                    'while [ "${1#--}" != "$1" ]; do shift; done\n'
                    'exec mpiexec --oversubscribe -n "$SLURM_NTASKS" "$@"\n')
    srun.chmod(0o755)
    env = dict(mpi_env(), PATH=f"{bin_dir}:{os.environ['PATH']}", SLURM_SUBMIT_DIR=str(ROOT),
               SLURM_NTASKS=str(tasks), SLURM_JOB_NUM_NODES="1", PT_LAUNCHER=launcher)
    sets = [a for s in COMMON + ["batch_size=8", "max_steps=6", f"log.dir={tmp_path / 'run'}"]
            for a in ("--set", s)]
    return subprocess.run(["bash", ROOT / "run" / script, *sets, *extra], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)


def test_bsp_through_srun(tmp_path):
    done = submit("slurm_bsp.sbatch", tmp_path, 2, "srun")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "BSP: 2 ranks on 1 node(s)" in done.stdout and "final: top1" in done.stdout
    args = (tmp_path / "srun.args").read_text()
    assert "--mpi=pmix --kill-on-bad-exit=1" in args and "run/bind_gpu.sh python3" in args


@pytest.mark.parametrize("script, tasks", [("slurm_easgd.sbatch", 3),
                                           ("slurm_downpour.sbatch", 3)])
def test_asynchronous_rules_through_mpiexec(tmp_path, script, tasks):
    done = submit(script, tmp_path, tasks, "mpiexec")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{tasks} ranks on 1 node(s)" in done.stdout and "final: top1" in done.stdout


def test_outside_an_allocation_it_says_so(tmp_path):
    env = dict(mpi_env(), SLURM_SUBMIT_DIR=str(ROOT))
    done = subprocess.run(["bash", ROOT / "run" / "slurm_bsp.sbatch"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "submit this script with sbatch" in done.stderr


def test_an_unknown_launcher_is_refused(tmp_path):
    done = submit("slurm_gossip.sbatch", tmp_path, 2, "aprun")
    assert done.returncode == 2 and "PT_LAUNCHER must be mpiexec or srun" in done.stderr


def bound(tmp_path, **env):
    """CUDA_VISIBLE_DEVICES as bind_gpu.sh leaves it for a rank with ``env``."""
    base = {k: v for k, v in os.environ.items() if k not in
            ("CUDA_VISIBLE_DEVICES", "OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID")}
    base["PATH"] = f"{tmp_path}:{base['PATH']}"
    done = subprocess.run([ROOT / "run" / "bind_gpu.sh", "sh", "-c",
                           "echo ${CUDA_VISIBLE_DEVICES-unset}"], env=dict(base, **env),
                          capture_output=True, text=True, timeout=30, check=True)
    return done.stdout.strip()


def test_each_local_rank_gets_one_of_the_jobs_gpus(tmp_path):
    assert bound(tmp_path, CUDA_VISIBLE_DEVICES="4,5,6,7", SLURM_LOCALID="2") == "6"
    assert bound(tmp_path, CUDA_VISIBLE_DEVICES="4,5,6,7", SLURM_LOCALID="5") == "5"
    assert bound(tmp_path, CUDA_VISIBLE_DEVICES="3", OMPI_COMM_WORLD_LOCAL_RANK="1") == "3"
    # Open MPI's local rank wins over Slurm's (mpiexec inside an allocation sets both)
    assert bound(tmp_path, CUDA_VISIBLE_DEVICES="0,1", OMPI_COMM_WORLD_LOCAL_RANK="1",
                 SLURM_LOCALID="0") == "1"


def test_without_a_gpu_list_it_asks_nvidia_smi_or_leaves_the_rank_alone(tmp_path):
    if Path("/usr/bin/nvidia-smi").exists() or Path("/usr/local/bin/nvidia-smi").exists():
        pytest.skip("this machine has a real nvidia-smi")
    assert bound(tmp_path, SLURM_LOCALID="1") == "unset"
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\nprintf '0\\n1\\n2\\n'\n")
    smi.chmod(0o755)
    assert bound(tmp_path, SLURM_LOCALID="4") == "1"
