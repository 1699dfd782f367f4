"""Denial-of-service attacks on a real orchestrator (its public API and its federation port).

One orchestrator process on loopback (plaintext, so a joiner names itself;
an API token on the public port; Join limited to 3 per minute per identity)
takes each attack in turn: health Watch streams past its worker count,
token guessing and an oversized body without a token, a join storm and
unchanged rejoins, oversized join descriptions, and a second long poll on
one session. Deadlines only detect a hang: a hang fails.
"""

from __future__ import annotations

import sqlite3
import time
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from fedgrpo import serving
from fedgrpo.job.launcher import free_port
from fedgrpo.v1 import federation_pb2 as fpb
from fedgrpo.v1 import federation_pb2_grpc as fpb_grpc
from fedgrpo.v1 import orchestrator_pb2 as pb
from fedgrpo.v1 import orchestrator_pb2_grpc as pb_grpc
from fedgrpo.v1 import reward_client_pb2 as rpb

from .conftest import federation

pytestmark = pytest.mark.integration

HANG = 30.0
TOKEN = "a-test-token-of-enough-length-0123"
WORKERS = 32  # the orchestrator's worker threads per port (services/orchestrator/server.py)


@pytest.fixture(scope="module")
def orchestrator(tmp_path_factory, model_cache):
    tmp = tmp_path_factory.mktemp("dos")
    (tmp / "tokens").write_text(TOKEN + "\n")
    metrics_port = free_port()
    with federation(
        tmp, model_cache, clients=[], trainer=False,
        orchestrator_args=["--no-confidence-graph", "--client-wait-seconds", "1", "--api-tokens-file",
                           str(tmp / "tokens"), "--join-rate-limit", "3/minute", "--metrics-port", str(metrics_port)],
    ) as (_, fed, services):
        yield services["orchestrator"], tmp, metrics_port


def code_of(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code()


def describe(name: str, domains=("add1",)) -> rpb.DescribeResponse:
    return rpb.DescribeResponse(name=name, domains=list(domains), evaluator_kinds=[1], reward_min=0, reward_max=1)


def test_health_watch_streams_past_the_worker_count_leave_the_api_answering(orchestrator):
    service, _, _ = orchestrator
    for address in (service.address, service.federation_address):
        with grpc.insecure_channel(address) as ch:  # no token, no identity: anyone can do this
            health = health_pb2_grpc.HealthStub(ch)
            request = health_pb2.HealthCheckRequest(service="")
            watches = [health.Watch(request, timeout=HANG * 2) for _ in range(WORKERS + 8)]
            for watch in watches:
                assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
            if address == service.address:
                with serving.channel(address, token=TOKEN) as api:
                    assert pb_grpc.OrchestratorServiceStub(api).ListRuns(pb.ListRunsRequest(), timeout=HANG) is not None
            else:
                fed = fpb_grpc.FederationServiceStub(ch)
                assert code_of(lambda: fed.Heartbeat(fpb.HeartbeatRequest(session_id="x"), timeout=HANG)) == (
                    grpc.StatusCode.NOT_FOUND
                )
            for watch in watches:
                watch.cancel()


def test_metrics_listen_on_loopback_only(orchestrator):
    _, _, metrics_port = orchestrator
    listening = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                address, port = local.rsplit(":", 1)
                if state == "0A" and int(port, 16) == metrics_port:  # 0A: LISTEN
                    listening.append(address)
    assert listening == ["0100007F"]  # 127.0.0.1, little-endian hex; 0.0.0.0 would be 00000000
    scraped = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=HANG).read().decode()
    assert "fedgrpo_rpc_seconds" in scraped


def test_guessed_tokens_are_refused_before_decoding_then_rate_limited(orchestrator):
    service, _, _ = orchestrator
    path = "/fedgrpo.v1.OrchestratorService/ListRuns"
    with grpc.insecure_channel(service.address, options=serving.message_options(64 * 1024 * 1024)) as ch:
        # 17 MiB, past the server's 16 MiB bound: a server that read the body would answer RESOURCE_EXHAUSTED.
        oversized = b"\x0a" + b"\xff" * (17 * 1024 * 1024)
        assert code_of(lambda: ch.unary_unary(path)(oversized, timeout=HANG)) == grpc.StatusCode.UNAUTHENTICATED
        guesses = []
        for i in range(10):
            bad = [("authorization", f"Bearer guess-{i:02d}-xxxxxxxxxxxxxxxx")]
            if i % 2:
                call = lambda: ch.unary_unary(path)(b"", metadata=bad, timeout=HANG)  # noqa: E731
            else:  # a streaming call is checked the same way
                call = lambda: list(ch.unary_stream("/fedgrpo.v1.OrchestratorService/WatchRun")(  # noqa: E731
                    pb.WatchRunRequest(run_id="r").SerializeToString(), metadata=bad, timeout=HANG))
            guesses.append(code_of(call))
        # auth_failure_limit is 10/minute: the oversized call and 9 guesses are refused as unauthenticated...
        assert guesses == [grpc.StatusCode.UNAUTHENTICATED] * 9 + [grpc.StatusCode.RESOURCE_EXHAUSTED]
        # ...and past it even the right token waits, so guesses are not answered faster than the limit.
        good = [("authorization", f"Bearer {TOKEN}")]
        assert code_of(lambda: ch.unary_unary(path)(b"", metadata=good, timeout=HANG)) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED
        )
    with grpc.insecure_channel(service.address) as ch:  # health stays open to probes
        assert health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=HANG).status == (
            health_pb2.HealthCheckResponse.SERVING
        )


def joins(metrics_port: int) -> dict[str, float]:
    scraped = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=HANG).read().decode()
    return {
        s.labels["outcome"]: s.value
        for family in text_string_to_metric_families(scraped) if family.name == "fedgrpo_joins"
        for s in family.samples if s.name == "fedgrpo_joins_total"
    }


def stored_at(database, name: str) -> float | None:
    with sqlite3.connect(database) as db:
        row = db.execute("SELECT updated_at FROM clients WHERE name = ?", (name,)).fetchone()
    return row[0] if row else None


def wait_stored(database, name: str) -> float:
    deadline = time.monotonic() + HANG
    while (at := stored_at(database, name)) is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name} never reached the store")
        time.sleep(0.05)
    return at


def test_a_join_storm_is_rate_limited_and_unchanged_rejoins_do_no_work(orchestrator):
    service, tmp, metrics_port = orchestrator
    database = tmp / "runs" / "orchestrator.sqlite3"
    with grpc.insecure_channel(service.federation_address) as ch:
        fed = fpb_grpc.FederationServiceStub(ch)
        before = joins(metrics_port)
        fed.Join(fpb.JoinRequest(description=describe("steady")), timeout=HANG)
        first = wait_stored(database, "steady")
        fed.Join(fpb.JoinRequest(description=describe("steady")), timeout=HANG)  # unchanged: nothing queued
        # Join work runs in join order on one thread: once "marker" is stored, a write for "steady" would be too.
        fed.Join(fpb.JoinRequest(description=describe("marker")), timeout=HANG)
        wait_stored(database, "marker")
        assert stored_at(database, "steady") == first
        after = joins(metrics_port)
        assert after.get("unchanged", 0) - before.get("unchanged", 0) == 1
        assert after.get("changed", 0) - before.get("changed", 0) == 2
        # The third join of "steady" this minute is the last one --join-rate-limit 3/minute admits.
        fed.Join(fpb.JoinRequest(description=describe("steady", ("add1", "sub1"))), timeout=HANG)
        storm = [code_of(lambda: fed.Join(fpb.JoinRequest(description=describe("steady")), timeout=HANG))
                 for _ in range(5)]
        assert storm == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 5
        assert joins(metrics_port).get("refused", 0) - before.get("refused", 0) == 5


@pytest.mark.parametrize(("name", "domains", "field"), [
    ("many-domains", [f"domain-{i}" for i in range(65)], "description.domains"),
    ("odd-domain", ["icd\n"], "description.domains"),
    ("long-domain", ["x" * 100_000], "description.domains"),
    ("twice", ["add1", "add1"], "description.domains"),
    ("newline\n", ["add1"], "description.name"),
    ("n" * 65, ["add1"], "description.name"),
])
def test_a_join_description_out_of_bounds_names_its_field(orchestrator, name, domains, field):
    service, _, _ = orchestrator
    with grpc.insecure_channel(service.federation_address) as ch:
        with pytest.raises(grpc.RpcError) as err:
            fpb_grpc.FederationServiceStub(ch).Join(fpb.JoinRequest(description=describe(name, domains)), timeout=HANG)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(f"{field}:")
    assert len(err.value.details()) < 400  # the 100k-character domain is not echoed back


def test_one_long_poll_per_session(orchestrator):
    service, _, _ = orchestrator
    with grpc.insecure_channel(service.federation_address) as ch:
        fed = fpb_grpc.FederationServiceStub(ch)
        session = fed.Join(fpb.JoinRequest(description=describe("poller")), timeout=HANG).session_id
        first = fed.FetchTasks.future(fpb.FetchTasksRequest(session_id=session, wait_seconds=30), timeout=HANG * 2)

        def second() -> grpc.StatusCode:
            try:
                fed.FetchTasks(fpb.FetchTasksRequest(session_id=session, wait_seconds=0), timeout=HANG)
            except grpc.RpcError as err:
                return err.code()
            return grpc.StatusCode.OK

        deadline = time.monotonic() + HANG  # until the first poll is waiting on the server
        while (code := second()) == grpc.StatusCode.OK and time.monotonic() < deadline:
            time.sleep(0.05)
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        first.cancel()  # the first caller goes away: its place is free without waiting out its 30 s
        deadline = time.monotonic() + HANG
        while (code := second()) == grpc.StatusCode.RESOURCE_EXHAUSTED and time.monotonic() < deadline:
            time.sleep(0.05)
        assert code == grpc.StatusCode.OK
