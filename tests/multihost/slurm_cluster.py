"""A real single-node Slurm cluster for the tests (Debian's ``slurm-wlm`` and ``munge``), as
root, in a temporary folder:

- munge: a key if there is none, then ``munged --force`` (it refuses root without it);
- ``slurm.conf``: this host as controller and as the one node (``CPUs`` = its cores),
  ``proctrack/linuxproc``, ``task/none``, ``select/cons_tres``, ``MpiDefault=none``, state,
  spool, logs and pid files under the folder, ports that were free;
- ``slurmctld`` and ``slurmd``, then waiting until the node is idle.

``SlurmCluster.start`` raises ``SlurmUnavailable`` with the reason where that cannot be done
(not root, no Slurm installed, a daemon that does not come up), for the tests to skip with it.
Every command the tests run gets ``env()``, which points ``SLURM_CONF`` at this cluster.
"""
import contextlib
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

CONF = """ClusterName=pt-test
SlurmctldHost={host}
SlurmUser=root
SlurmdUser=root
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
AuthType=auth/munge
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
KillWait=10
MinJobAge=300
InactiveLimit=0
NodeName={host} CPUs={cpus} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
"""


# why a pending job will never start on this cluster
HOPELESS = {"PartitionConfig", "BadConstraints", "PartitionNodeLimit", "PartitionTimeLimit",
            "ReqNodeNotAvail"}


class SlurmUnavailable(RuntimeError):
    """No Slurm cluster can be started here; the message says why."""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SlurmCluster:
    def __init__(self, folder):
        self.folder = Path(folder)
        self.conf = self.folder / "slurm.conf"
        self.host = socket.gethostname()
        self.started_munge = False

    def env(self, **more):
        return {**os.environ, **more, "SLURM_CONF": str(self.conf)}

    def run(self, *command, check=True, timeout=30, cwd=None, env=None):
        """``command``'s output, with this cluster's ``env()`` (and ``env``'s variables)."""
        done = subprocess.run([str(c) for c in command], capture_output=True, text=True,
                              env=self.env(**(env or {})), timeout=timeout, cwd=cwd)
        if check and done.returncode != 0:
            raise SlurmUnavailable(f"{' '.join(map(str, command))}: {done.stderr.strip()}")
        return done.stdout

    def start(self):
        if os.geteuid() != 0:
            raise SlurmUnavailable("a Slurm cluster is started as root")
        for tool in ("slurmctld", "slurmd", "munged", "sbatch", "scontrol"):
            if shutil.which(tool) is None:
                raise SlurmUnavailable(f"'{tool}' is not installed (apt install slurm-wlm "
                                       f"munge)")
        self._munge()
        for sub in ("state", "spool"):
            (self.folder / sub).mkdir(parents=True, exist_ok=True)
        self.conf.write_text(CONF.format(host=self.host, folder=self.folder,
                                         cpus=os.cpu_count() or 1, ctld_port=free_port(),
                                         d_port=free_port()))
        self.run("slurmctld", "-c", "-f", self.conf)      # -c: no state from a previous run
        self.run("slurmd", "-f", self.conf)
        self._wait_idle()
        return self

    def _munge(self):
        key = Path("/etc/munge/munge.key")
        if not key.exists():
            self.run("mungekey", "--create", check=False)
        Path("/run/munge").mkdir(parents=True, exist_ok=True)
        shutil.chown("/run/munge", "munge", "munge")
        if subprocess.run(["pgrep", "-x", "munged"], capture_output=True).returncode != 0:
            self.run("munged", "--force")
            self.started_munge = True

    def _wait_idle(self, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = subprocess.run(["sinfo", "-h", "-n", self.host, "-o", "%t"],
                                   capture_output=True, text=True, env=self.env()).stdout
            if state.strip().startswith("idle"):
                return
            time.sleep(0.5)
        log = (self.folder / "slurmd.log")
        raise SlurmUnavailable(f"the node did not become idle in {timeout} s: "
                               f"{log.read_text()[-500:] if log.exists() else 'no slurmd log'}")

    def stop(self):
        """End the daemons this cluster started (munged only if it started it)."""
        if self.started_munge:
            subprocess.run(["pkill", "-x", "munged"], check=False)
        for pid_file in ("slurmd.pid", "slurmctld.pid"):
            path = self.folder / pid_file
            if path.exists():
                with contextlib.suppress(ProcessLookupError, ValueError):   # already gone
                    os.kill(int(path.read_text().strip()), 15)

    def job(self, job_id):
        """{key: value} of ``scontrol show job`` (JobState, Restarts, ExitCode, ...)."""
        text = self.run("scontrol", "-o", "show", "job", job_id, check=False)
        return dict(part.split("=", 1) for part in text.split() if "=" in part)

    def wait(self, job_id, states=("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"),
             timeout=300):
        """Wait until job ``job_id`` is in one of ``states``; its ``job`` record."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            record = self.job(job_id)
            if record.get("JobState") in states:
                return record
            if record.get("Reason") in HOPELESS:
                raise RuntimeError(f"job {job_id} can never start here: {record['Reason']} "
                                   f"({record.get('NumTasks')} tasks, {record.get('NumCPUs')} "
                                   f"CPUs)")
            time.sleep(1)
        raise TimeoutError(f"job {job_id} not in {states} after {timeout} s: "
                           f"{self.job(job_id)}")
