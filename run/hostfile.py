"""Checks an Open MPI hostfile before a multi-host launch, so that a mistake is one clear line
instead of a daemon timeout: ``python3 -m run.hostfile FILE RANKS [--agent ssh]``.

A hostfile has one host per line, ``name [slots=N] [max_slots=N]``, ``#`` comments. The check:
the file reads, the slots add up to at least RANKS (when every line gives ``slots``; Open
MPI counts a host's cores otherwise), and every host that is not this machine answers
``AGENT HOST true`` within the timeout (all hosts at once). Exit status 0, or 2 with the
reason on stderr.
"""
import argparse
import shlex
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor


class HostfileError(ValueError):
    """A hostfile that cannot be used for this launch."""


def read_hostfile(path):
    """[(host, slots or None)] in file order; raises HostfileError naming the line."""
    try:
        lines = open(path).read().splitlines()
    except OSError as err:
        raise HostfileError(f"hostfile {path}: {err.strerror}") from None
    hosts = []
    for number, line in enumerate(lines, 1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        options = dict(word.split("=", 1) for word in words[1:] if "=" in word)
        unknown = [w for w in words[1:] if "=" not in w or w.split("=")[0] not in
                   ("slots", "max_slots", "max-slots")]
        if unknown:
            raise HostfileError(f"hostfile {path} line {number}: cannot read {unknown[0]!r} "
                                f"(expected 'host slots=N')")
        slots = options.get("slots")
        if slots is not None and (not slots.isdigit() or int(slots) < 1):
            raise HostfileError(f"hostfile {path} line {number}: slots={slots} is not a "
                                f"whole number >= 1")
        hosts.append((words[0], int(slots) if slots is not None else None))
    if not hosts:
        raise HostfileError(f"hostfile {path} names no host")
    return hosts


def check_slots(path, hosts, ranks):
    """HostfileError if the hostfile gives fewer slots than ``ranks``."""
    if any(slots is None for _, slots in hosts):
        return
    total = sum(slots for _, slots in hosts)
    if total < ranks:
        raise HostfileError(f"hostfile {path} gives {total} slot(s) on {len(hosts)} host(s) "
                            f"for {ranks} ranks: add hosts or slots, or start fewer workers")


def is_this_machine(host):
    return host in ("localhost", "127.0.0.1", socket.gethostname(), socket.getfqdn())


def answer(host, agent, timeout):
    """None if ``AGENT HOST true`` succeeds within ``timeout`` s, else why not."""
    command = shlex.split(agent)
    if command[0] == "ssh":      # never ask for a password, and give up on a silent host
        command += ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={int(timeout)}"]
    try:
        done = subprocess.run(command + [host, "true"], capture_output=True, text=True,
                              timeout=timeout + 5)
    except FileNotFoundError:
        return f"the agent '{command[0]}' is not installed"
    except subprocess.TimeoutExpired:
        return f"no answer in {timeout + 5:g} s"
    if done.returncode != 0:
        return (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
    return None


def check_hosts(path, hosts, agent, timeout):
    """HostfileError naming every host that does not answer through ``agent``."""
    remote = sorted({host for host, _ in hosts if not is_this_machine(host)})
    with ThreadPoolExecutor(max(1, min(32, len(remote)))) as pool:
        problems = [(host, why) for host, why in
                    zip(remote, pool.map(lambda h: answer(h, agent, timeout), remote)) if why]
    if problems:
        listed = "; ".join(f"{host}: {why}" for host, why in problems)
        raise HostfileError(f"hostfile {path}: cannot reach {len(problems)} host(s) through "
                            f"'{agent}' (mpiexec starts ranks that way): {listed}")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python3 -m run.hostfile", description=__doc__)
    parser.add_argument("hostfile")
    parser.add_argument("ranks", type=int)
    parser.add_argument("--agent", default="ssh", help="what mpiexec starts ranks with")
    parser.add_argument("--timeout", type=float, default=15, help="seconds per host")
    args = parser.parse_args(argv)
    try:
        hosts = read_hostfile(args.hostfile)
        check_slots(args.hostfile, hosts, args.ranks)
        check_hosts(args.hostfile, hosts, args.agent, args.timeout)
    except HostfileError as err:
        print(err, file=sys.stderr)
        return 2
    slots = sum(s for _, s in hosts) if all(s for _, s in hosts) else "host-counted"
    print(f"{args.ranks} ranks on {len(hosts)} host(s) of {args.hostfile} ({slots} slots)",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
