"""A cluster of simulated hosts on one Linux machine, for multi-host runs without a cluster.

Each host is a network namespace (``ip netns``) with one interface, ``eth0`` at
``10.77.0.<i>/24``, joined to the others by a bridge in a hub namespace, so MPI traffic
between hosts really crosses TCP between addresses. Open MPI starts ranks on a host through
an agent script (instead of ssh) that runs the command in that namespace under the host's
own name (``unshare --uts``); the file system is shared. Needs root (CAP_SYS_ADMIN and
CAP_NET_ADMIN) and iproute2::

    python3 -m run.netns up 3            # hosts pt-h1..pt-h3, prints the hostfile and agent
    python3 -m run.netns up 3 --rate 1gbit    # each host's link limited to 1 Gbit/s each way
    ip netns exec pt-h1 env PT_HOSTFILE=... PT_AGENT=... PT_INTERFACE=10.77.0.0/24 \\
        run/run_bsp.sh 3
    python3 -m run.netns down 3

``--rate`` shapes each host's link in both directions with a token bucket (``tc`` ``tbf``:
the host's ``eth0`` for what it sends, its port on the bridge for what it receives), so a host
sends and receives at most that many bits a second; traffic between ranks on one host stays
unshaped, as on a real host. Only the bandwidth can be set: ``tbf`` and ``htb`` work on this
kernel, but ``netem`` (delay, loss) is not built into it, so latency cannot be added here.
"""
import re
import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

AGENT = """#!/bin/sh
# Open MPI's stand-in for ssh: "agent HOST COMMAND..." runs COMMAND in network namespace HOST
# with HOST as its host name, as ssh would run it on that host.
host=$1; shift
exec ip netns exec "$host" unshare --uts /bin/sh -c 'hostname "$0" && exec /bin/sh -c "$1"' \\
    "$host" "$*"
"""


class NetnsError(RuntimeError):
    """The namespaces cannot be made here (no rights, no iproute2)."""


UNITS = {"bit": 1, "kbit": 10 ** 3, "mbit": 10 ** 6, "gbit": 10 ** 9}


def parse_rate(rate):
    """Bits per second of a ``tc`` rate such as '50mbit', '1gbit' or '2.5gbit'."""
    found = re.fullmatch(r"(\d+(?:\.\d+)?)(bit|kbit|mbit|gbit)", str(rate).lower())
    if found is None or float(found.group(1)) <= 0:
        raise ValueError(f"a link rate is a positive number with bit, kbit, mbit or gbit "
                         f"(e.g. 200mbit, 1gbit), got {rate!r}")
    return float(found.group(1)) * UNITS[found.group(2)]


def shape(namespace, device, rate):
    """Limit what ``device`` in ``namespace`` sends to ``rate`` (tc tbf). The bucket holds
    10 ms at that rate and at least 128 KB, more than one offloaded 64 KB segment."""
    burst = max(int(parse_rate(rate) / 8 / 100), 128 * 1024)
    done = subprocess.run(["ip", "netns", "exec", namespace, "tc", "qdisc", "replace", "dev",
                           device, "root", "tbf", "rate", rate, "burst", str(burst),
                           "latency", "100ms"], capture_output=True, text=True)
    if done.returncode != 0:
        raise NetnsError(f"tc cannot limit {device} in {namespace} to {rate}: "
                         f"{done.stderr.strip()}")


def _ip(*args, check=True):
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and done.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


class NetnsCluster:
    """``hosts`` simulated hosts named ``<prefix>1..``; a context manager (``up``/``down``)."""

    def __init__(self, hosts, prefix="pt-h", subnet="10.77.0", folder=None, rate=None):
        """``rate`` (e.g. '1gbit'; None: unlimited) limits every host's link each way."""
        if not 1 <= hosts <= 250:
            raise ValueError(f"hosts must be in [1, 250], got {hosts}")
        if rate is not None:
            parse_rate(rate)
        self.rate = rate
        self.names = [f"{prefix}{i}" for i in range(1, hosts + 1)]
        self.hub = f"{prefix}ub"
        self.subnet = subnet
        self.folder = Path(folder or tempfile.mkdtemp(prefix="netns-cluster-"))
        self.agent = self.folder / "agent"

    @property
    def network(self):
        """The hosts' subnet, as Open MPI's ``*_if_include`` takes it."""
        return f"{self.subnet}.0/24"

    def address(self, host):
        return f"{self.subnet}.{self.names.index(host) + 1}"

    def up(self):
        for tool in ("ip", "unshare") + (("tc",) if self.rate else ()):
            if shutil.which(tool) is None:
                raise NetnsError(f"'{tool}' is not installed (apt install iproute2 util-linux)")
        self.down()                                   # leftovers of an interrupted run
        _ip("netns", "add", self.hub)
        _ip("-n", self.hub, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.hub, "link", "set", "br0", "up")
        for i, host in enumerate(self.names, 1):
            _ip("netns", "add", host)
            _ip("-n", self.hub, "link", "add", f"h{i}", "type", "veth", "peer", "name", "eth0",
                "netns", host)
            _ip("-n", self.hub, "link", "set", f"h{i}", "master", "br0", "up")
            _ip("-n", host, "addr", "add", f"{self.address(host)}/24", "dev", "eth0")
            _ip("-n", host, "link", "set", "eth0", "up")
            _ip("-n", host, "link", "set", "lo", "up")
            if self.rate:
                shape(host, "eth0", self.rate)         # what the host sends
                shape(self.hub, f"h{i}", self.rate)    # what it receives
        self.agent.write_text(AGENT)
        self.agent.chmod(0o755)
        probe = subprocess.run([str(self.agent), self.names[0], "true"], capture_output=True,
                               text=True)
        if probe.returncode != 0:           # e.g. no right to make a UTS namespace
            raise NetnsError(f"the agent cannot start commands on {self.names[0]}: "
                             f"{probe.stderr.strip()}")
        return self

    def down(self):
        for name in self.names + [self.hub]:
            _ip("netns", "del", name, check=False)

    def __enter__(self):
        return self.up()

    def __exit__(self, *exc):
        self.down()

    def hostfile(self, slots=1, hosts=None):
        """Write a hostfile giving ``slots`` to each host (all, or the first ``hosts``)."""
        path = self.folder / f"hostfile.{hosts or len(self.names)}x{slots}"
        path.write_text("".join(f"{host} slots={slots}\n"
                                for host in self.names[:hosts or len(self.names)]))
        return path

    def command(self, host, argv):
        """``argv`` run in ``host``'s namespace (mpiexec runs on the first host, a head node)."""
        return ["ip", "netns", "exec", host, *map(str, argv)]

    def traffic(self):
        """{host: bytes received + sent on its eth0 so far}."""
        counts = {}
        for host in self.names:
            stats = json.loads(_ip("-n", host, "-j", "-s", "link", "show", "eth0"))[0]["stats64"]
            counts[host] = stats["rx"]["bytes"] + stats["tx"]["bytes"]
        return counts


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python3 -m run.netns", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("up", "down"))
    parser.add_argument("hosts", type=int)
    parser.add_argument("--slots", type=int, default=1, help="slots per host in the hostfile")
    parser.add_argument("--rate", default=None,
                        help="limit each host's link, each way (tc tbf), e.g. 200mbit, 1gbit")
    args = parser.parse_args(argv)
    try:
        cluster = NetnsCluster(args.hosts, folder=Path("/tmp/pt-netns"), rate=args.rate)
    except ValueError as err:
        parser.error(str(err))
    try:
        if args.action == "down":
            cluster.down()
            return 0
        cluster.folder.mkdir(exist_ok=True)
        cluster.up()
    except NetnsError as err:
        print(f"cannot make the namespaces: {err}", file=sys.stderr)
        return 2
    limit = f", each link limited to {args.rate} each way" if args.rate else ""
    print(f"hosts {' '.join(cluster.names)} on {cluster.network}{limit}\n"
          f"PT_HOSTFILE={cluster.hostfile(args.slots)} PT_AGENT={cluster.agent} "
          f"PT_INTERFACE={cluster.network}\nstart runs with: ip netns exec {cluster.names[0]} "
          f"env PT_HOSTFILE=... PT_AGENT=... PT_INTERFACE=... run/run_bsp.sh N")
    return 0


if __name__ == "__main__":
    sys.exit(main())
