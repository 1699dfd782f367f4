"""Reward clients on other hosts: each in its own network namespace.

Two namespaces joined to this host by veth pairs stand for two
organisations' machines. Their reward clients listen on nothing reachable
(their own loopback only) and join the orchestrator over the veth network
with mutual TLS; the run is scored by both. Needs root for `ip netns`; skips
with the reason where that is not allowed.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time

import pytest

from fedgrpo.certs import init_federation
from fedgrpo.v1 import orchestrator_pb2 as pb

from .conftest import federation, wait_for_clients
from .test_join import run_to_end, steps_of

pytestmark = pytest.mark.integration

SUFFIX = f"{os.getpid() % 10000}"
HOSTS = [  # (namespace, host-side address, client-side address)
    (f"fgA{SUFFIX}", "10.231.1.1", "10.231.1.2"),
    (f"fgB{SUFFIX}", "10.231.2.1", "10.231.2.2"),
]


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, text=True, timeout=30)


@pytest.fixture(scope="module")
def hosts():
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("multi-host test needs root and iproute2 (`ip netns`) to make network namespaces")
    made = []
    try:
        for i, (ns, host_ip, client_ip) in enumerate(HOSTS):
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
    yield HOSTS
    for ns in made:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)  # also removes its veth pair


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
        wait_for_clients(stub, ["org-a", "org-b"], timeout=180)
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
