"""The hostfile check the launchers run before a multi-host start (run/hostfile.py)."""
import subprocess
import sys
import time

import pytest

from run.hostfile import HostfileError, check_hosts, check_slots, read_hostfile
from tests.mpi import ROOT, mpi_env


def write(tmp_path, text):
    path = tmp_path / "hosts"
    path.write_text(text)
    return path


def test_reads_hosts_slots_and_comments(tmp_path):
    path = write(tmp_path, "# head\nnode1 slots=4  # gpu box\n\nnode2 slots=2 max_slots=8\nnode3\n")
    assert read_hostfile(path) == [("node1", 4), ("node2", 2), ("node3", None)]


@pytest.mark.parametrize("text, expected", [
    ("node1 slots=x\n", "line 1: slots=x is not a whole number"),
    ("node1\nnode2 slots=0\n", "line 2: slots=0 is not a whole number"),
    ("node1 cpus=4\n", "line 1: cannot read 'cpus=4'"),
    ("node1 4\n", "line 1: cannot read '4'"),
    ("# nothing\n", "names no host"),
])
def test_a_line_it_cannot_read_is_named(tmp_path, text, expected):
    with pytest.raises(HostfileError, match=expected):
        read_hostfile(write(tmp_path, text))


def test_fewer_slots_than_ranks_is_an_error_unless_a_host_counts_its_cores(tmp_path):
    with pytest.raises(HostfileError, match="gives 3 slot\\(s\\) on 2 host\\(s\\) for 4 ranks"):
        check_slots("h", [("a", 1), ("b", 2)], 4)
    check_slots("h", [("a", 1), ("b", 2)], 3)
    check_slots("h", [("a", 1), ("b", None)], 64)        # Open MPI counts b's cores


def test_hosts_that_do_not_answer_are_all_named(tmp_path):
    agent = tmp_path / "agent"        # a stand-in for ssh: only 'good' answers
    agent.write_text('#!/bin/sh\n[ "$1" = good ] || { echo "no route to $1" >&2; exit 255; }\n')
    agent.chmod(0o755)
    check_hosts("h", [("good", 1), ("localhost", 2)], str(agent), timeout=5)
    with pytest.raises(HostfileError) as err:
        check_hosts("h", [("good", 1), ("bad1", 1), ("bad2", 1)], str(agent), timeout=5)
    assert "cannot reach 2 host(s)" in str(err.value)
    assert "bad1: no route to bad1" in str(err.value) and "bad2: no route" in str(err.value)


def test_a_host_that_never_answers_times_out(tmp_path):
    agent = tmp_path / "agent"
    agent.write_text("#!/bin/sh\nexec sleep 60\n")
    agent.chmod(0o755)
    tick = time.perf_counter()
    with pytest.raises(HostfileError, match="silent: no answer in 6 s"):
        check_hosts("h", [("silent", 1)], str(agent), timeout=1)
    assert time.perf_counter() - tick < 15


def test_the_launcher_stops_before_mpiexec_when_slots_are_short(tmp_path):
    hostfile = write(tmp_path, "localhost slots=2\n")
    done = subprocess.run([ROOT / "run" / "run_bsp.sh", "3"], capture_output=True, text=True,
                          env=dict(mpi_env(), PT_HOSTFILE=str(hostfile)), timeout=60)
    assert done.returncode == 2
    assert "gives 2 slot(s) on 1 host(s) for 3 ranks" in done.stderr


def test_the_hostfile_can_come_from_the_config(tmp_path):
    write(tmp_path, "localhost slots=1\n")
    config = tmp_path / "c.yaml"
    config.write_text("cluster:\n  hostfile: hosts\n")     # relative to the config's folder
    done = subprocess.run([ROOT / "run" / "run_easgd.sh", "1", config], capture_output=True,
                          text=True, env=mpi_env(), timeout=60)
    assert done.returncode == 2 and "gives 1 slot(s) on 1 host(s) for 2 ranks" in done.stderr


def test_the_command_line_check(tmp_path):
    path = write(tmp_path, "localhost slots=2\n")
    done = subprocess.run([sys.executable, "-m", "run.hostfile", path, "2"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "2 ranks on 1 host(s)" in done.stderr
