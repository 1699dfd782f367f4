"""Thread exhaustion on a real gRPC server built as every service builds it, and the joined client's task cap.

Each test performs the attack: open streams that used to hold worker
threads, fill the server's concurrent-call bound, or flood a joined client
that never answers with tasks. Deadlines only detect a hang (a hang fails).
"""

from __future__ import annotations

import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from fedgrpo import serving
from fedgrpo.job.launcher import free_port
from fedgrpo.services.orchestrator.joined import AlreadyPolling, JoinedTransport, ScoreError
from fedgrpo.settings import ServiceSettings
from fedgrpo.v1 import reward_client_pb2 as pb

HANG = 20.0  # seconds after which a call that should have answered counts as hung


def started(workers: int, **settings) -> tuple[grpc.Server, str]:
    port = free_port()
    server, health = serving.build_server(
        serving.Endpoint([], port), ServiceSettings(plaintext=True, **settings), max_workers=workers
    )
    server.start()
    serving.set_serving(health, [])
    return server, f"127.0.0.1:{port}"


def test_open_health_watch_streams_hold_no_worker_thread():
    server, address = started(workers=2)
    try:
        with grpc.insecure_channel(address) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            watches = [stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=120) for _ in range(6)]
            for watch in watches:  # each stream is open and has answered
                assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
            # Three times the workers are watching: a plain call still answers.
            assert stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=HANG).status == (
                health_pb2.HealthCheckResponse.SERVING
            )
            for watch in watches:
                watch.cancel()
    finally:
        server.stop(grace=None)


def test_reflection_is_off_unless_asked_for():
    server, address = started(workers=2)
    try:
        with grpc.insecure_channel(address) as ch:
            stream = reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=HANG
            )
            with pytest.raises(grpc.RpcError) as err:
                next(stream)
            assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        server.stop(grace=None)


def test_calls_past_max_concurrent_rpcs_are_refused_not_queued():
    # Reflection streams block a worker each while open: the attack where reflection is enabled.
    server, address = started(workers=16, reflection=True, max_concurrent_rpcs=2)
    try:
        with grpc.insecure_channel(address) as ch:
            stub = reflection_pb2_grpc.ServerReflectionStub(ch)
            held, streams = [], []
            for _ in range(2):
                stop = threading.Event()

                def requests(stop=stop):
                    yield reflection_pb2.ServerReflectionRequest(list_services="")
                    stop.wait(HANG)  # keep the stream open

                stream = stub.ServerReflectionInfo(requests(), timeout=HANG * 3)
                assert next(stream).list_services_response.service  # open and answering
                held.append(stop)
                streams.append(stream)
            with pytest.raises(grpc.RpcError) as err:
                health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=HANG)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            for stop, stream in zip(held, streams):
                stop.set()
                stream.cancel()
    finally:
        server.stop(grace=None)


def wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + HANG
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.01)


def test_a_joined_client_that_never_answers_holds_at_most_max_open_tasks():
    transport = JoinedTransport("silent", heartbeat_timeout=600, max_open_tasks=3)
    transport.start_session(pb.DescribeResponse(name="silent"))
    errors: list[ScoreError] = []

    def score() -> None:
        try:
            transport.score(pb.ScoreRequest(question_id="q", candidates=["1"]), timeout=HANG * 3)
        except ScoreError as err:
            errors.append(err)

    waiting = [threading.Thread(target=score, daemon=True) for _ in range(3)]
    for t in waiting:
        t.start()
    wait_until(lambda: transport.pending() == 3, "three tasks never opened")
    with pytest.raises(ScoreError) as err:  # at once, not after the deadline
        transport.score(pb.ScoreRequest(question_id="q4", candidates=["1"]), timeout=HANG * 3)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert transport.pending() == 3
    assert transport.end_session("test over") == 3
    for t in waiting:
        t.join(HANG)
    assert [e.code() for e in errors] == [grpc.StatusCode.UNAVAILABLE] * 3


def test_one_waiting_fetch_per_session_and_a_cancelled_one_frees_its_place():
    transport = JoinedTransport("poller", heartbeat_timeout=600)
    session = transport.start_session(pb.DescribeResponse(name="poller"))
    first, got = object(), []
    poll = threading.Thread(target=lambda: got.append(transport.fetch(session, 60, 4, first)), daemon=True)
    poll.start()

    def refused() -> bool:
        try:
            transport.fetch(session, 0, 4)
        except AlreadyPolling:
            return True
        return False

    wait_until(refused, "a second fetch was never refused while the first waited")
    transport.cancel_poll(first)  # what the servicer does when the first caller goes away
    poll.join(HANG)
    assert got == [[]]
    assert transport.fetch(session, 0, 4) == []
