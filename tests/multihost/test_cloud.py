"""The OpenStack Heat template of run/cloud.py: valid YAML and HOT structure, one server per
node, references that resolve, node scripts that parse, the commands each node needs."""
import re
import shutil
import stat
import subprocess

import pytest
import yaml

from run.cloud import main as cloud

REPO = "https://example.org/parallel-training.git"


def generate(tmp_path, *options):
    out = tmp_path / "stack.yaml"
    assert cloud(["--repo", REPO, "-o", str(out), *options]) == 0
    return yaml.safe_load(out.read_text()), out


def references(node):
    """Every (function, target) of get_resource / get_param / get_attr in ``node``."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("get_resource", "get_param"):
                yield key, value
            elif key == "get_attr":
                yield key, value[0]
            else:
                yield from references(value)
    elif isinstance(node, list):
        for value in node:
            yield from references(value)


def scripts(template):
    return {name: r["properties"]["user_data"] for name, r in template["resources"].items()
            if r["type"] == "OS::Nova::Server"}


@pytest.fixture(autouse=True)
def needs_ssh_keygen():
    if shutil.which("ssh-keygen") is None:
        pytest.skip("ssh-keygen (openssh-client) is not installed")


def test_bsp_cluster_has_a_head_and_one_server_per_worker(tmp_path):
    template, out = generate(tmp_path, "--workers", "3")
    assert template["heat_template_version"] == "2018-08-31"
    servers = scripts(template)
    assert sorted(servers) == ["head", "worker1", "worker2", "worker3"]
    assert stat.S_IMODE(out.stat().st_mode) == 0o600           # it holds a private key
    for function, target in references(template["resources"]):
        table = template["parameters"] if function == "get_param" else template["resources"]
        assert target in table or target == "OS::stack_name", (function, target)
    for name, script in servers.items():
        assert script.startswith("#!/bin/bash\n")
        subprocess.run(["bash", "-n"], input=script, text=True, check=True)   # it parses
        assert f"git clone --depth 1 --branch main {REPO} /opt/parallel-training" in script
        assert "/opt/pt-venv/bin/pip install -q -e '/opt/parallel-training[mpi]'" in script
        assert "run/get_data.sh" in script
    head = servers["head"]
    hostfile = re.search(r"<<'HOSTS'\n(.*?)\nHOSTS", head, re.S)[1]
    assert hostfile.splitlines() == ["10.10.0.11 slots=1", "10.10.0.12 slots=1",
                                     "10.10.0.13 slots=1"]
    assert "nohup ./run/run_bsp.sh \\\n    3 config.yaml" in head
    assert "for ip in 10.10.0.11 10.10.0.12 10.10.0.13; do" in head
    assert all("run_bsp.sh" not in servers[f"worker{i}"] for i in (1, 2, 3))
    ips = [template["resources"][f"{n}_port"]["properties"]["fixed_ips"][0]["ip_address"]
           for n in ("head", "worker1", "worker2", "worker3")]
    assert ips == ["10.10.0.10", "10.10.0.11", "10.10.0.12", "10.10.0.13"]


def test_the_head_holds_the_key_every_node_trusts(tmp_path):
    template, _ = generate(tmp_path, "--workers", "2")
    servers = scripts(template)
    private = re.search(r"<<'KEY'\n(.*?\n)KEY", servers["head"], re.S)[1]
    key = tmp_path / "key"
    key.write_text(private)
    key.chmod(0o600)
    public = subprocess.run(["ssh-keygen", "-y", "-f", key], capture_output=True, text=True,
                            check=True).stdout.split()[1]
    for script in servers.values():
        assert public in re.search(r"echo '(.*)' >> /root/.ssh/authorized_keys", script)[1]


def test_server_ranks_go_to_the_head(tmp_path):
    template, _ = generate(tmp_path, "--workers", "2", "--slots", "4", "--rule", "DOWNPOUR",
                           "--set", "downpour.servers=2", "--cidr", "192.168.7.0/24")
    head = scripts(template)["head"]
    hostfile = re.search(r"<<'HOSTS'\n(.*?)\nHOSTS", head, re.S)[1]
    assert hostfile.splitlines() == ["192.168.7.10 slots=2", "192.168.7.11 slots=4",
                                     "192.168.7.12 slots=4"]
    assert "./run/run_downpour.sh \\\n    8 config.yaml --set downpour.servers=2" in head
    assert "PT_INTERFACE=192.168.7.0/24" in head
    easgd, _ = generate(tmp_path, "--workers", "1", "--rule", "EASGD")
    assert "10.10.0.10 slots=1\n10.10.0.11 slots=1" in scripts(easgd)["head"]


@pytest.mark.parametrize("options, message", [
    (["--workers", "0"], "--workers and --slots must be at least 1"),
    (["--workers", "2", "--cidr", "10.0.0.300/24"], "--cidr"),
])
def test_bad_options_are_refused(tmp_path, capsys, options, message):
    with pytest.raises(SystemExit):
        cloud(["--repo", REPO, "-o", str(tmp_path / "s.yaml"), *options])
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("options, message", [
    (["--workers", "300"], "too few addresses for 300 workers"),
    (["--workers", "1", "--set", "batch_size=-1"], "config error: --set batch_size=-1"),
])
def test_a_plan_that_cannot_work_is_refused(tmp_path, options, message):
    with pytest.raises(SystemExit, match=message):
        cloud(["--repo", REPO, "-o", str(tmp_path / "s.yaml"), *options])
    assert not (tmp_path / "s.yaml").exists()
