"""An OpenStack Heat template for a training cluster: one head node and N worker nodes on a
private network, as the seed project deployed its runs.

    python3 -m run.cloud --workers 4 --rule BSP --repo https://HOST/parallel-training.git \\
        --image debian-12 --flavor m1.xlarge --key-name mykey --external-network public
    openstack stack create -t stack.yaml pt

Every node installs the project (a virtual environment at the same path everywhere, so
Open MPI finds itself on each host) and prepares the data; the head writes the hostfile,
waits until every worker is ready, and starts the run with the rule's launcher over the
private network. Server ranks (EASGD, Downpour) go to the head, workers ``--slots`` per worker
node. Nodes reach each other over ssh with a key pair made here for this cluster only: the
template holds its private key, so it is written readable by its owner alone.
"""
import argparse
import ipaddress
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

import sync                                     # noqa: F401  (every rule's settings)
from core.config import load_config
from core.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
HOME = "/opt/parallel-training"
VENV = "/opt/pt-venv"
LAUNCHERS = {"BSP": "run_bsp.sh", "EASGD": "run_easgd.sh", "DOWNPOUR": "run_downpour.sh",
             "GOSSIP": "run_gossip.sh"}
READY = "/var/lib/parallel-training.ready"
WAIT_S = 3600        # the head gives workers this long to install


def cluster_key():
    """(private, public) OpenSSH ed25519 key pair, made with ssh-keygen."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "key"
        try:
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C",
                            "parallel-training-cluster", "-f", str(path)], check=True,
                           capture_output=True)
        except FileNotFoundError:
            raise SystemExit("ssh-keygen not found: install openssh-client") from None
        return path.read_text(), (path.parent / "key.pub").read_text().strip()


def install_script(args, public_key, plan):
    """What every node runs first (cloud-init user data, as root)."""
    nodes = " ".join([plan["head"]] + plan["worker_ips"])
    return f"""#!/bin/bash
# parallel-training node: install, prepare the data, trust the cluster key
set -euo pipefail
exec >> /var/log/parallel-training-install.log 2>&1
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q python3-venv python3-pip git openssh-client
git clone --depth 1 --branch {shlex.quote(args.branch)} {shlex.quote(args.repo)} {HOME}
python3 -m venv {VENV}
{VENV}/bin/pip install -q -e '{HOME}[mpi]'
export PATH={VENV}/bin:$PATH
{HOME}/run/get_data.sh
mkdir -p /root/.ssh && chmod 700 /root/.ssh
echo '{public_key}' >> /root/.ssh/authorized_keys
printf 'Host {nodes}\\n  StrictHostKeyChecking accept-new\\n  BatchMode yes\\n' \\
    >> /root/.ssh/config
touch {READY}
"""


def head_script(args, plan, private_key, network):
    """The head node's run, after its install: hostfile, wait for workers, start."""
    hostfile = "".join(f"{ip} slots={slots}\n" for ip, slots in plan["hostfile"])
    workers = " ".join(plan["worker_ips"])
    sets = " ".join(f"--set {shlex.quote(s)}" for s in args.set)
    return f"""
# head node: the cluster's key, the hostfile, then the run once every worker is ready
cat > /root/.ssh/id_ed25519 <<'KEY'
{private_key.strip()}
KEY
chmod 600 /root/.ssh/id_ed25519
cat > {HOME}/hostfile <<'HOSTS'
{hostfile.rstrip()}
HOSTS
deadline=$((SECONDS + {WAIT_S}))
for ip in {workers}; do
    until ssh -o ConnectTimeout=10 "$ip" test -f {READY}; do
        [ $SECONDS -lt $deadline ] || {{ echo "worker $ip not ready in {WAIT_S} s" >&2; exit 1; }}
        sleep 15
    done
done
cd {HOME}
PT_HOSTFILE={HOME}/hostfile PT_INTERFACE={network} nohup ./run/{LAUNCHERS[args.rule]} \\
    {plan['workers']} {shlex.quote(args.config)} {sets} > /var/log/parallel-training-run.log 2>&1 &
"""


def plan_ranks(args, network):
    """Fixed addresses (head .10, workers .11 on) and the hostfile: servers on the head."""
    try:
        cfg = load_config(ROOT / args.config, args.set)
    except ConfigError as err:
        raise SystemExit(f"config error: {err}") from None
    servers = {"EASGD": 1, "DOWNPOUR": cfg["downpour"]["servers"]}.get(args.rule, 0)
    hosts = list(network.hosts())
    if len(hosts) < 11 + args.workers:
        raise SystemExit(f"--cidr {network} has too few addresses for {args.workers} workers")
    head, worker_ips = str(hosts[9]), [str(ip) for ip in hosts[10:10 + args.workers]]
    hostfile = ([(head, servers)] if servers else []) + [(ip, args.slots) for ip in worker_ips]
    return {"head": head, "worker_ips": worker_ips, "hostfile": hostfile,
            "workers": args.workers * args.slots}


def server(name, port, script):
    return {"type": "OS::Nova::Server",
            "properties": {"name": {"str_replace": {"template": f"$stack-{name}",
                                                    "params": {"$stack": {"get_param":
                                                                          "OS::stack_name"}}}},
                           "image": {"get_param": "image"}, "flavor": {"get_param": "flavor"},
                           "key_name": {"get_param": "key_name"},
                           "networks": [{"port": {"get_resource": port}}],
                           "user_data_format": "RAW", "user_data": script},
            "depends_on": ["router_interface"]}


def port(ip):
    return {"type": "OS::Neutron::Port",
            "properties": {"network": {"get_resource": "network"},
                           "fixed_ips": [{"subnet": {"get_resource": "subnet"},
                                          "ip_address": ip}],
                           "security_groups": [{"get_resource": "security_group"}]}}


def template(args, private_key, public_key):
    """The Heat template (a dict) for ``args``."""
    network = ipaddress.ip_network(args.cidr)
    plan = plan_ranks(args, network)
    install = install_script(args, public_key, plan)
    inside = {"remote_ip_prefix": str(network)}
    resources = {
        "network": {"type": "OS::Neutron::Net"},
        "subnet": {"type": "OS::Neutron::Subnet",
                   "properties": {"network": {"get_resource": "network"}, "cidr": str(network),
                                  "dns_nameservers": {"get_param": "dns_nameservers"}}},
        "router": {"type": "OS::Neutron::Router",
                   "properties": {"external_gateway_info":
                                  {"network": {"get_param": "external_network"}}}},
        "router_interface": {"type": "OS::Neutron::RouterInterface",
                             "properties": {"router": {"get_resource": "router"},
                                            "subnet": {"get_resource": "subnet"}}},
        "security_group": {"type": "OS::Neutron::SecurityGroup", "properties": {"rules": [
            dict(inside, protocol="tcp"), dict(inside, protocol="udp"),
            dict(inside, protocol="icmp"),
            {"protocol": "tcp", "port_range_min": 22, "port_range_max": 22,
             "remote_ip_prefix": {"get_param": "ssh_from"}}]}},
        "head_port": port(plan["head"]),
        "head": server("head", "head_port",
                       install + head_script(args, plan, private_key, network)),
        "head_address": {"type": "OS::Neutron::FloatingIP",
                         "properties": {"floating_network": {"get_param": "external_network"},
                                        "port_id": {"get_resource": "head_port"}},
                         "depends_on": ["router_interface"]},
    }
    for i, ip in enumerate(plan["worker_ips"], 1):
        resources[f"worker{i}_port"] = port(ip)
        resources[f"worker{i}"] = server(f"worker{i}", f"worker{i}_port", install)
    return {
        "heat_template_version": "2018-08-31",
        "description": f"parallel-training: {args.rule} over {plan['workers']} worker(s) on "
                       f"{args.workers} worker node(s) and a head node",
        "parameters": {
            "image": {"type": "string", "default": args.image,
                      "description": "a Debian or Ubuntu image with cloud-init"},
            "flavor": {"type": "string", "default": args.flavor},
            "key_name": {"type": "string", "default": args.key_name,
                         "description": "your key pair, to log in to the nodes"},
            "external_network": {"type": "string", "default": args.external_network},
            "dns_nameservers": {"type": "comma_delimited_list", "default": "8.8.8.8"},
            "ssh_from": {"type": "string", "default": "0.0.0.0/0",
                         "description": "who may ssh to the head (CIDR)"},
        },
        "resources": resources,
        "outputs": {
            "head_address": {"value": {"get_attr": ["head_address", "floating_ip_address"]},
                             "description": "ssh root@ADDRESS tail -f "
                                            "/var/log/parallel-training-run.log"},
        },
    }


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python3 -m run.cloud", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, required=True, help="worker nodes")
    parser.add_argument("--slots", type=int, default=1, help="worker ranks per worker node")
    parser.add_argument("--rule", choices=sorted(LAUNCHERS), default="BSP")
    parser.add_argument("--repo", required=True, help="git URL the nodes clone")
    parser.add_argument("--branch", default="main")
    parser.add_argument("--config", default="config.yaml", help="in the repository")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--image", default="debian-12")
    parser.add_argument("--flavor", default="m1.xlarge")
    parser.add_argument("--key-name", default="default")
    parser.add_argument("--external-network", default="public")
    parser.add_argument("--cidr", default="10.10.0.0/24", help="the private network")
    parser.add_argument("-o", "--output", default="stack.yaml")
    args = parser.parse_args(argv)
    if args.workers < 1 or args.slots < 1:
        parser.error("--workers and --slots must be at least 1")
    try:
        ipaddress.ip_network(args.cidr)
    except ValueError as err:
        parser.error(f"--cidr: {err}")
    text = yaml.safe_dump(template(args, *cluster_key()), sort_keys=False, width=100)
    out = Path(args.output)
    out.touch(mode=0o600)
    out.chmod(0o600)
    out.write_text(text)
    print(f"wrote {out} (holds the cluster's private ssh key): openstack stack create -t "
          f"{out} NAME", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
