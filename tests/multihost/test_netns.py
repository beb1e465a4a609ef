"""Multi-host runs for real: three hosts simulated as network namespaces joined by a bridge
(run/netns.py), ranks started on them by Open MPI through an agent instead of ssh, traffic
over TCP between 10.78.0.x addresses. Skipped where namespaces cannot be made (not root)."""
import json
import os
import subprocess
import time

import numpy as np
import pytest

from run.netns import NetnsCluster, NetnsError
from tests.mpi import OVERSUBSCRIBE, ROOT, mpi_env, mpiexec, run_mpi
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


def exchange_across(cluster, hosts, per_host, method, megabytes=4, repeats=3):
    """hierarchy_check.py on ``hosts`` hosts with ``per_host`` ranks each, dealt round-robin
    (rank r on host r mod hosts); returns its JSON report."""
    flags = across(cluster, hosts)["flags"]
    flags[1] = cluster.hostfile(per_host, hosts)
    done = run_mpi(hosts * per_host, [ROOT / "tests" / "multihost" / "hierarchy_check.py",
                                      method, megabytes, repeats],
                   timeout=120, flags=flags, prefix=cluster.command(cluster.names[0], []))
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("hosts, per_host", [(2, 2), (3, 2)])
def test_the_hierarchical_exchange_sends_one_buffer_per_host_across(cluster, hosts, per_host):
    """Against the flat ring over the same ranks: the same mean (to float32 rounding), and each
    host's link carries at most 1/k of the ring's bytes with k ranks per host (the ring over
    ranks dealt round-robin crosses a link at every hop; the hierarchy sends only the leaders'
    all-reduce)."""
    flat = exchange_across(cluster, hosts, per_host, "ring")
    tiered = exchange_across(cluster, hosts, per_host, "auto")
    assert tiered["exchange"].startswith("auto: hierarchical"), tiered["exchange"]
    assert f"{hosts} host(s), at most {per_host} rank(s) on one" in tiered["exchange"]
    assert tiered["sum"] == pytest.approx(flat["sum"], rel=1e-5, abs=1e-2)
    assert set(tiered["bytes"]) == set(cluster.names[:hosts])
    for host in tiered["bytes"]:
        assert tiered["bytes"][host] <= flat["bytes"][host] / per_host, (tiered, flat)
        # the leaders' ring alone: 2 (H - 1) / H of the buffer each way per exchange
        least = 2 * 2 * (hosts - 1) / hosts * tiered["buffer_bytes"] * tiered["repeats"]
        assert tiered["bytes"][host] >= least, (host, tiered["bytes"][host], least)


def test_a_rate_limits_each_host_s_link_each_way(tmp_path):
    """2 hosts at 100 Mbit/s: a ring exchange of 2.5 MB moves 2.5 MB each way per exchange,
    which takes at least 0.2 s at that rate (unlimited veth links move GB/s)."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    mpiexec()
    with pytest.raises(ValueError, match="a link rate is a positive number"):
        NetnsCluster(2, rate="fast")
    slow = NetnsCluster(2, prefix="pt-rate", subnet="10.80.0", folder=tmp_path, rate="100mbit")
    try:
        slow.up()
    except NetnsError as err:
        slow.down()
        pytest.skip(f"cannot make shaped namespaces here: {err}")
    try:
        report = exchange_across(slow, 2, 1, "ring", megabytes=2.5, repeats=2)
    finally:
        slow.down()
    sent = report["buffer_bytes"]                     # each way, per exchange, per host
    assert sent * 8 / report["seconds"] <= 100e6 * 1.1, report


def test_bsp_with_the_hierarchical_exchange_equals_the_flat_one(cluster, tmp_path):
    settings = WIDE + ["batch_size=8", "max_steps=12", "exchange.shared_min_bytes=0"]
    flags = across(cluster, 2)
    flags["flags"][1] = cluster.hostfile(2, 2)
    tiered, _ = run_rule(tmp_path / "hier", 4, settings + ["exchange.method=hierarchical"],
                         **flags)
    flat, _ = run_rule(tmp_path / "flat", 4, settings + ["exchange.method=ring"], **flags)
    for params in tiered[1:]:
        np.testing.assert_array_equal(params, tiered[0])
    np.testing.assert_allclose(tiered[0], flat[0], rtol=2e-5, atol=2e-6)


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
