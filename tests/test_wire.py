"""ByteCountingRelay with real gRPC (the standard health service) on loopback; nothing mocked."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from fedgrpo.job.wire import ByteCountingRelay, relay_all

SERVICE = "fedgrpo.v1.RewardClient"
DEADLINE = 5.0
# A private subchannel pool, so a fresh channel never reuses another's connection
# (or its reconnect backoff); no proxy from the environment on loopback.
OPTIONS = [("grpc.use_local_subchannel_pool", 1), ("grpc.enable_http_proxy", 0)]


@contextlib.contextmanager
def health_server(port: int = 0):
    server = grpc.server(ThreadPoolExecutor(max_workers=4))
    servicer = health.HealthServicer()
    servicer.set(SERVICE, health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    assert bound, f"could not bind 127.0.0.1:{port}"
    server.start()
    try:
        yield bound
    finally:
        server.stop(None)


@contextlib.contextmanager
def stub(address: str):
    channel = grpc.insecure_channel(address, options=OPTIONS)
    try:
        yield health_pb2_grpc.HealthStub(channel)
    finally:
        channel.close()


def check(health_stub, wait_for_ready: bool = False) -> tuple[int, int]:
    """One call; returns the serialized (request, response) payload sizes."""
    request = health_pb2.HealthCheckRequest(service=SERVICE)
    response = health_stub.Check(request, timeout=DEADLINE, wait_for_ready=wait_for_ready)
    assert response.status == health_pb2.HealthCheckResponse.SERVING
    return request.ByteSize(), response.ByteSize()


def relay_threads(relay: ByteCountingRelay) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"wire-relay-{relay.target}"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server_port():
    with health_server() as port:
        yield port


def test_calls_pass_through_and_bytes_cover_the_payloads(server_port):
    with ByteCountingRelay(f"127.0.0.1:{server_port}") as relay, stub(relay.address) as s:
        assert relay.address.startswith("127.0.0.1:") and not relay.address.endswith(":0")
        assert relay.snapshot() == (0, 0)
        sizes = [check(s) for _ in range(5)]
        sent, received = relay.snapshot()
        assert sent == relay.bytes_to_target and received == relay.bytes_from_target
        assert sent >= sum(req for req, _ in sizes) > 0
        assert received >= sum(resp for _, resp in sizes) > 0


def test_more_calls_mean_strictly_more_bytes(server_port):
    with ByteCountingRelay(f"127.0.0.1:{server_port}") as relay, stub(relay.address) as s:
        check(s)
        before = relay.snapshot()
        check(s)
        middle = relay.snapshot()
        for _ in range(3):
            check(s)
        after = relay.snapshot()
        assert before[0] < middle[0] < after[0]
        assert before[1] < middle[1] < after[1]


def test_concurrent_connections(server_port):
    with ByteCountingRelay(f"127.0.0.1:{server_port}") as relay:
        with stub(relay.address) as a, stub(relay.address) as b, ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda i: check(a if i % 2 else b), range(16)))
        assert len(results) == 16
        sent, received = relay.snapshot()
        assert sent >= sum(r for r, _ in results) and received >= sum(r for _, r in results)


def test_half_close_and_exact_counts_with_a_raw_tcp_peer():
    """A peer that answers only after the caller's EOF: the half-close must pass through."""
    listener = socket.create_server(("127.0.0.1", 0))

    def answer_after_eof():
        conn, _ = listener.accept()
        with conn:
            data = b""
            while chunk := conn.recv(4096):
                data += chunk
            conn.sendall(data[::-1] * 2)

    peer = threading.Thread(target=answer_after_eof, daemon=True)
    peer.start()
    with listener, ByteCountingRelay("127.0.0.1:%d" % listener.getsockname()[1]) as relay:
        with socket.create_connection(_addr(relay), timeout=DEADLINE) as c:
            c.sendall(b"hello")
            c.shutdown(socket.SHUT_WR)
            reply = b""
            while chunk := c.recv(4096):
                reply += chunk
        peer.join(DEADLINE)
        assert reply == b"olleholleh"
        assert relay.snapshot() == (5, 10)


def test_reset_by_the_caller_does_not_break_the_relay(server_port):
    with ByteCountingRelay(f"127.0.0.1:{server_port}") as relay:
        c = socket.create_connection(_addr(relay), timeout=DEADLINE)
        c.sendall(b"PRI * HTTP/2.0\r\n")  # half a preface, then a reset
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.close()
        with stub(relay.address) as s:
            check(s)


def test_dead_target_gives_unavailable_then_recovers():
    port = free_port()
    with ByteCountingRelay(f"127.0.0.1:{port}") as relay:
        with stub(relay.address) as s, pytest.raises(grpc.RpcError) as err:
            check(s)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        socket.create_connection(_addr(relay), timeout=DEADLINE).close()  # still accepting
        with health_server(port), stub(relay.address) as s:
            check(s, wait_for_ready=True)
        assert relay.bytes_from_target > 0


def test_close_makes_later_calls_fail_and_leaves_no_threads(server_port):
    relay = ByteCountingRelay(f"127.0.0.1:{server_port}").start()
    with stub(relay.address) as s:
        check(s)
        assert relay_threads(relay)
        relay.close()
        assert not relay_threads(relay)
        counted = relay.snapshot()  # after close(): late HTTP/2 frames may still pass before it
        with pytest.raises(grpc.RpcError) as err:
            check(s)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert relay.snapshot() == counted
    relay.close()  # idempotent


def test_relay_all(server_port):
    relays = relay_all([f"127.0.0.1:{server_port}"] * 2)
    try:
        assert len({r.address for r in relays}) == 2
        for r in relays:
            with stub(r.address) as s:
                check(s)
            assert min(r.snapshot()) > 0
    finally:
        for r in relays:
            r.close()


def _addr(relay: ByteCountingRelay) -> tuple[str, int]:
    host, _, port = relay.address.rpartition(":")
    return host, int(port)
