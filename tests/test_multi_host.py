"""Reward clients on other hosts: each in its own network namespace.

Two namespaces joined to this host by veth pairs stand for two
organisations' machines. Their reward clients listen on nothing reachable
(their own loopback only) and join the orchestrator over the veth network
with mutual TLS; the run is scored by both. Needs root for `ip netns`; skips
with the reason where that is not allowed.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest

from fedgrpo.certs import init_federation
from fedgrpo.v1 import orchestrator_pb2 as pb

from .conftest import federation, wait_for_clients
from .test_join import run_to_end, steps_of

pytestmark = pytest.mark.integration

SUFFIX = f"{os.getpid() % 10000}"


def free_subnets(count: int) -> list[ipaddress.IPv4Network]:
    """``count`` /24s in 10.231.0.0/16 that no route of this host covers. A fixed pair was taken by
    namespaces a killed earlier run left behind: two interfaces on one subnet, and the replies went out of
    the stale one (seen: the clients never joined)."""
    routes = subprocess.run(["ip", "-4", "-o", "route", "show", "table", "all"], capture_output=True, text=True)
    used = []
    for line in routes.stdout.splitlines():
        try:
            used.append(ipaddress.ip_network(line.split()[0], strict=False))
        except ValueError:  # default, broadcast, local ...: the address is the second word
            with contextlib.suppress(ValueError, IndexError):
                used.append(ipaddress.ip_network(line.split()[1], strict=False))
    free = [net for net in ipaddress.ip_network("10.231.0.0/16").subnets(new_prefix=24)
            if not any(net.overlaps(u) for u in used if u.prefixlen > 0)]
    if len(free) < count:
        pytest.skip(f"no {count} free /24s in 10.231.0.0/16 for the simulated hosts")
    return free[:count]


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, text=True, timeout=30)


@pytest.fixture(scope="module")
def hosts():
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("multi-host test needs root and iproute2 (`ip netns`) to make network namespaces")
    made, hosts = [], []
    for letter, net in zip("AB", free_subnets(2)):
        host_ip, client_ip = (str(a) for a in list(net.hosts())[:2])
        hosts.append((f"fg{letter}{SUFFIX}", host_ip, client_ip))  # (namespace, host side, client side)
    try:
        for i, (ns, host_ip, client_ip) in enumerate(hosts):
            sh("ip", "netns", "add", ns)
            made.append(ns)
            outside, inside = f"fgh{i}{SUFFIX}", f"fgc{i}{SUFFIX}"
            sh("ip", "link", "add", outside, "type", "veth", "peer", "name", inside)
            sh("ip", "link", "set", inside, "netns", ns)
            sh("ip", "addr", "add", f"{host_ip}/24", "dev", outside)
            sh("ip", "link", "set", outside, "up")
            sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"{client_ip}/24", "dev", inside)
            sh("ip", "netns", "exec", ns, "ip", "link", "set", inside, "up")
            sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
    except subprocess.CalledProcessError as err:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        pytest.skip(f"network namespaces are not allowed here: {' '.join(err.cmd)}: {err.stderr.strip()}")
    yield hosts
    for ns in made:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)  # also removes its veth pair


def network_state(hosts, port: int) -> str:
    """What a failed join needs explained: each namespace's TCP reach to the orchestrator, and the routes."""
    lines = []
    for ns, host_ip, _ in hosts:
        probe = (f"import socket; s = socket.socket(); s.settimeout(3); "
                 f"print('connect {host_ip}:{port} from {ns}:', s.connect_ex(('{host_ip}', {port})))")
        done = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", probe],
                              capture_output=True, text=True, timeout=30)
        lines.append((done.stdout + done.stderr).strip())
    for cmd in (["ip", "-br", "addr"], ["ip", "route"], ["ip", "netns", "list"]):
        lines.append(subprocess.run(cmd, capture_output=True, text=True).stdout.strip())
    return "\n".join(lines)


def test_clients_on_two_other_hosts_join_over_tls_and_score_a_run(tmp_path, model_cache, hosts):
    certs = tmp_path / "certs"
    init_federation(certs, clients=["org-a", "org-b"], hosts=[h for _, h, _ in hosts])
    with federation(
        tmp_path, model_cache, clients=[], certs=certs,
        orchestrator_args=["--host", "0.0.0.0", "--auxiliary-size", "10", "--auxiliary-domains", "add1,sub1",
                           "--heartbeat-seconds", "1", "--neighbours", "4"],
    ) as (stub, fed, services):
        port = services["orchestrator"].federation_address.rsplit(":", 1)[1]
        for (ns, host_ip, _), (name, domains) in zip(hosts, [("org-a", "add1"), ("org-b", "sub1")]):
            services[name] = fed.start(
                name, "reward-client",
                ["--name", name, "--domains", domains, "--bank-size", "200", "--orchestrator", f"{host_ip}:{port}"],
                wrapper=["ip", "netns", "exec", ns],
            )
        try:
            wait_for_clients(stub, ["org-a", "org-b"], timeout=180, services=services)
        except TimeoutError as err:
            raise TimeoutError(f"{err}\n--- the network then ---\n{network_state(hosts, int(port))}") from None
        listed = {c.name: c for c in stub.ListRewardClients(pb.ListRewardClientsRequest()).clients}
        # They came from their own hosts' addresses.
        assert hosts[0][2] in listed["org-a"].address and hosts[1][2] in listed["org-b"].address
        # Nothing of theirs is reachable from here: they only dialled out.
        client_port = int(services["org-a"].address.rsplit(":", 1)[1])
        with socket.socket() as probe:
            probe.settimeout(2)
            assert probe.connect_ex((hosts[0][2], client_port)) != 0

        run = stub.CreateRun(pb.CreateRunRequest(spec=pb.RunSpec(
            tasks=["add1", "sub1"], steps=2, questions_per_step=2, candidates_per_question=4,
            experts_per_question=1, max_tokens=8,
        )))
        run = run_to_end(stub, run.run_id)
        assert run.state == pb.RUN_STATE_SUCCEEDED, run.error
        steps = steps_of(run)
        assert sum(s["rewards_received"] for s in steps) == 2 * 2 * 4
        scored = {name for s in steps for name in s["rewards_by_client"]}
        # Every step has one add1 and one sub1 question (tasks round-robin): each goes to its own expert.
        assert scored == {"org-a", "org-b"}
        assert all(s["questions_below_quorum"] == 0 for s in steps)
        # A clean shutdown leaves the federation at once.
        fed.stop(services["org-a"])
        deadline = time.monotonic() + 30
        while {c.name: c.healthy for c in stub.ListRewardClients(pb.ListRewardClientsRequest()).clients}["org-a"]:
            assert time.monotonic() < deadline
            time.sleep(0.2)
