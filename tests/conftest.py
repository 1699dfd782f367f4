"""Shared fixtures: a tiny model built locally, and real services as processes.

``federation(...)`` starts a trainer, reward clients and an orchestrator as
separate processes on free loopback ports (the same launcher `fedgrpo run`
uses) with the tiny model, and stops them afterwards. Nothing is mocked:
faults are injected on purpose through the reward client's test settings.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from pathlib import Path

import grpc
import pytest

from fedgrpo import serving
from fedgrpo.job.launcher import Federation
from fedgrpo.models import build_tiny_policy
from fedgrpo.v1 import orchestrator_pb2_grpc, policy_trainer_pb2_grpc, reward_client_pb2_grpc

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
START_TIMEOUT = 240.0
# Set by .ci/run: on CI every test can run (root, netns, buf installed), so a skip hides a lost test.
STRICT_SKIPS = os.environ.get("FEDGRPO_FAIL_ON_SKIP", "") not in ("", "0")


def pytest_sessionfinish(session, exitstatus):
    """With FEDGRPO_FAIL_ON_SKIP=1, a skipped test fails the session (the skips are listed by -rs)."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter else []
    if STRICT_SKIPS and skipped and session.exitstatus == 0:
        reporter.write_line("")
        reporter.write_line(
            f"FEDGRPO_FAIL_ON_SKIP: {len(skipped)} test(s) skipped where every test must run "
            "(reasons in the summary below)", red=True
        )
        session.exitstatus = 1
# Score calls of a dialed client in the orchestrator's first probe pass: its default --auxiliary-size.
PROBES = 100


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory) -> Path:
    """A model cache folder of this worker's own, holding the tiny policy. pytest-xdist's workers share one
    build of it (a lock, then a copy each): building is 120 training steps, minutes on a loaded CI machine."""
    from filelock import FileLock

    session = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        session = session.parent  # pytest-N/popen-gwK: pytest-N is this session's, shared by its workers
    with FileLock(str(session / "tiny-policy.lock")):
        built = build_tiny_policy(session / "tiny-policy-shared")
    cache = tmp_path_factory.mktemp("models")
    shutil.copytree(built, cache / "tiny-policy")
    return cache


@contextlib.contextmanager
def federation(
    tmp: Path,
    model_cache: Path,
    clients: list[tuple[str, list[str]]],
    backend: str = "transformers",
    trainer: bool = True,
    orchestrator_args: list[str] | None = None,
    joined: list[tuple[str, list[str]]] = (),
    certs: Path | None = None,
    trainer_args: list[str] | None = None,
    identities: dict[str, str] | None = None,
):
    """Yield (orchestrator stub, Federation, {name: Service}).

    ``clients`` (domains, extra args) are dialed by the orchestrator as
    client-<i>; ``joined`` ones join its federation port as joined-<i> once it
    is up. With ``certs`` (a `fedgrpo certs init` folder holding those
    identities) everything speaks mutual TLS and the stub sends the API token;
    ``identities`` gives a dialed client another certificate than its name's.
    """
    common = ["--model", "tiny-policy", "--cache-dir", str(model_cache), "--log-level", "INFO"]
    with Federation(tmp / "logs", certs=certs) as fed:
        services = {}
        if trainer:
            services["trainer"] = fed.start(
                "trainer", "trainer",
                [*common, "--state-dir", str(tmp / "trainer"), "--torch-threads", "1", *(trainer_args or [])],
            )
        for i, (domains, extra) in enumerate(clients):
            name = f"client-{i}"
            services[name] = fed.start(
                name, "reward-client", ["--name", name, "--domains", domains, "--bank-size", "200", *extra],
                identity=(identities or {}).get(name),
            )
        for s in services.values():
            fed.wait_healthy(s, START_TIMEOUT)
        trainer_address = services["trainer"].address if trainer else "127.0.0.1:1"
        dialed = [s.address for n, s in services.items() if n.startswith("client")]
        token_args = ["--api-tokens-file", str(certs / "api-token")] if certs else []
        services["orchestrator"] = fed.start(
            "orchestrator", "orchestrator",
            [*common, "--runs-dir", str(tmp / "runs"), "--trainer", trainer_address, "--backend", backend,
             "--max-model-len", "512", "--bank-size", "200", "--client-wait-seconds", "30",
             *(["--reward-clients", ",".join(dialed)] if dialed else []), *token_args,
             *(orchestrator_args or [])],
        )
        fed.wait_healthy(services["orchestrator"], START_TIMEOUT)
        for i, (domains, extra) in enumerate(joined):
            name = f"joined-{i}"
            services[name] = fed.start(
                name, "reward-client",
                ["--name", name, "--domains", domains, "--bank-size", "200",
                 "--orchestrator", services["orchestrator"].federation_address, *extra],
            )
        token = (certs / "api-token").read_text().strip() if certs else None
        with serving.channel(services["orchestrator"].address, fed.identity(), token=token) as ch:
            stub = orchestrator_pb2_grpc.OrchestratorServiceStub(ch)
            if joined:
                wait_for_clients(stub, [f"joined-{i}" for i in range(len(joined))])
            yield stub, fed, services


def wait_for_clients(stub, names, healthy: bool = True, timeout: float = 120.0, services: dict | None = None) -> None:
    """Block until every named client is listed with the given health; on timeout the error carries the
    log tails of the named ``services`` that are there (why a client did not join)."""
    from fedgrpo.v1 import orchestrator_pb2

    deadline = time.monotonic() + timeout
    while True:
        clients = stub.ListRewardClients(orchestrator_pb2.ListRewardClientsRequest()).clients
        listed = {c.name: c.healthy for c in clients}
        if all(listed.get(n) is healthy for n in names):
            return
        if time.monotonic() > deadline:
            logs = "".join(f"\n--- {n}.log ---\n{services[n].log_tail()}" for n in names if n in (services or {}))
            raise TimeoutError(
                f"clients {names} not {'live' if healthy else 'gone'} after {timeout:.0f}s: {listed}{logs}")
        time.sleep(0.25)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    """Rows as a JSON Lines file, as an organisation would write its own."""
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def call(channel: grpc.Channel, service: str, method: str, payload: bytes) -> grpc.StatusCode:
    """Status of one call with a raw (serialized) request: OK, or the code it ended with.

    The server-streaming methods (WatchRun, DownloadRunArtifacts, DownloadAdapter) are read to their end;
    the client-streaming SubmitAdapter gets a stream of this one message."""
    path = f"/{service}/{method}"
    try:
        if method in ("WatchRun", "DownloadRunArtifacts", "DownloadAdapter"):
            for _ in channel.unary_stream(path)(payload, timeout=30):
                pass
        elif method == "SubmitAdapter":
            channel.stream_unary(path)(iter([payload]), timeout=30)
        else:
            channel.unary_unary(path)(payload, timeout=30)
        return grpc.StatusCode.OK
    except grpc.RpcError as err:
        return err.code()


def trainer_stub(address: str):
    return policy_trainer_pb2_grpc.PolicyTrainerServiceStub(serving.channel(address))


def reward_stub(address: str):
    return reward_client_pb2_grpc.RewardClientServiceStub(serving.channel(address))
