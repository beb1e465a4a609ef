"""Multi-host runs for real: three hosts simulated as network namespaces joined by a bridge
(run/netns.py), ranks started on them by Open MPI through an agent instead of ssh, traffic
over TCP between 10.78.0.x addresses. Skipped where namespaces cannot be made (not root)."""
import os
import subprocess
import time

import numpy as np
import pytest

from run.netns import NetnsCluster, NetnsError
from tests.mpi import OVERSUBSCRIBE, ROOT, mpi_env, mpiexec
from tests.sync.helpers import COMMON, run_rule

WIDE = ["model_options={hidden: [512]}"]      # 42,506 parameters: 170 KB a step crosses


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    mpiexec()
    hosts = NetnsCluster(3, prefix="pt-test", subnet="10.78.0",
                         folder=tmp_path_factory.mktemp("netns"))
    try:
        hosts.up()
    except NetnsError as err:
        hosts.down()
        pytest.skip(f"cannot make network namespaces here: {err}")
    yield hosts
    hosts.down()


def across(cluster, hosts):
    """run_rule's options for ranks spread over the first ``hosts`` hosts, one per host in
    turn (run_mpi's --oversubscribe would fill the first host), TCP only."""
    flags = ["--hostfile", cluster.hostfile(1, hosts), "--map-by", "node",
             "--mca", "plm_ssh_agent", cluster.agent,
             "--mca", "btl", "tcp,self", "--mca", "btl_tcp_if_include", cluster.network,
             "--mca", "oob_tcp_if_include", cluster.network, "-x", "PYTHONPATH"]
    return {"flags": flags, "prefix": cluster.command(cluster.names[0], [])}


def test_bsp_over_three_hosts_equals_the_single_host_run(cluster, tmp_path):
    settings = WIDE + ["batch_size=8", "max_steps=12"]
    before = cluster.traffic()
    workers, info = run_rule(tmp_path / "hosts", 3, settings, **across(cluster, 3))
    crossed = {h: cluster.traffic()[h] - before[h] for h in cluster.names}
    single, _ = run_rule(tmp_path / "one", 3, settings)
    for params in workers[1:]:
        np.testing.assert_array_equal(params, workers[0])
    # the reduction order may differ (Open MPI picks hierarchical collectives across hosts)
    np.testing.assert_allclose(workers[0], single[0], rtol=2e-5, atol=2e-6)
    # every host's interface carried at least one buffer's worth a step: the gradients
    # went over TCP (a ring all-reduce moves 2 x 2/3 of the buffer per rank and step)
    buffer_bytes = workers[0].nbytes
    assert all(crossed[h] > 12 * buffer_bytes for h in cluster.names), (crossed, buffer_bytes)
    assert info[0]["top1"] is not None


def test_easgd_server_and_worker_on_two_hosts_equal_one_host(cluster, tmp_path):
    settings = WIDE + ["sync_rule=EASGD", "easgd.tau=2", "batch_size=8", "max_steps=8"]
    (center, worker), _ = run_rule(tmp_path / "hosts", 2, settings, **across(cluster, 2))
    (center1, worker1), _ = run_rule(tmp_path / "one", 2, settings)
    np.testing.assert_array_equal(center, center1)       # point to point: same arithmetic
    np.testing.assert_array_equal(worker, worker1)


def launcher(cluster, script, workers, hostfile, extra=(), timeout=180):
    """A run/ launcher started on the first host with the PT_* cluster variables."""
    env = dict(mpi_env(), PT_HOSTFILE=str(hostfile), PT_AGENT=str(cluster.agent),
               PT_INTERFACE=cluster.network)
    env.pop(OVERSUBSCRIBE)                              # the hostfile's slots count
    sets = [a for s in COMMON + ["batch_size=8", "max_steps=10", "log.export=false"]
            for a in ("--set", s)]
    command = cluster.command(cluster.names[0], [ROOT / "run" / script, workers, *sets, *extra])
    try:
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"{script} {workers} over the namespaces did not end in {timeout} s:\n"
                    f"{err.stdout}\n{err.stderr}")


@pytest.mark.parametrize("script, workers", [("run_bsp.sh", 3), ("run_easgd.sh", 2),
                                             ("run_downpour.sh", 2), ("run_gossip.sh", 3)])
def test_every_launcher_runs_across_hosts(cluster, tmp_path, script, workers):
    done = launcher(cluster, script, workers, cluster.hostfile(1),
                    ["--set", f"log.dir={tmp_path / 'run'}"])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "of 3 rank(s) on 3 host(s)" in done.stdout and "final: top1" in done.stdout


def test_a_host_that_cannot_be_reached_stops_the_launch_with_its_name(cluster, tmp_path):
    hostfile = tmp_path / "hosts"
    hostfile.write_text(f"{cluster.names[0]} slots=1\npt-test-gone slots=1\n")
    tick = time.perf_counter()
    done = launcher(cluster, "run_bsp.sh", 2, hostfile, timeout=60)
    assert done.returncode == 2
    assert "cannot reach 1 host(s)" in done.stderr and "pt-test-gone" in done.stderr
    assert time.perf_counter() - tick < 30
