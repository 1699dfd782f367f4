"""gRPC plumbing shared by every fedgrpo service.

``serve()`` starts a server with the given servicers plus the standard gRPC
health service (every service reports SERVING once started) and server
reflection, and blocks until SIGINT/SIGTERM, then drains in-flight calls.
``invalid()`` / ``not_found()`` abort an RPC with a status whose message names
the offending field, so callers always learn what to fix.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Iterable
from concurrent import futures
from typing import Any, NoReturn

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

log = logging.getLogger(__name__)

# Servicer registration: (add_XServicer_to_server, servicer instance, full service name).
Registration = tuple[Callable[[Any, grpc.Server], None], Any, str]

# Rollout batches and snapshots metadata stay far below this; the cap only
# keeps a hostile or buggy peer from making a service allocate without bound.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024

CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]


def invalid(context: grpc.ServicerContext, field: str, problem: str) -> NoReturn:
    """Abort with INVALID_ARGUMENT naming the request field and what was expected."""
    context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{field}: {problem}")
    raise AssertionError("unreachable")  # context.abort raises


def not_found(context: grpc.ServicerContext, what: str) -> NoReturn:
    context.abort(grpc.StatusCode.NOT_FOUND, what)
    raise AssertionError("unreachable")


def failed_precondition(context: grpc.ServicerContext, what: str) -> NoReturn:
    context.abort(grpc.StatusCode.FAILED_PRECONDITION, what)
    raise AssertionError("unreachable")


def build_server(
    registrations: Iterable[Registration], host: str, port: int, max_workers: int = 16
) -> tuple[grpc.Server, health.HealthServicer]:
    """A started-ready (not yet started) server with health and reflection."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers), options=CHANNEL_OPTIONS
    )
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [health.SERVICE_NAME, reflection.SERVICE_NAME]
    for add, servicer, name in registrations:
        add(servicer, server)
        names.append(name)
    reflection.enable_server_reflection(names, server)
    address = f"{host}:{port}"
    if server.add_insecure_port(address) == 0:
        raise SystemExit(f"cannot listen on {address}: the port is taken or the host is not local")
    return server, health_servicer


def set_serving(health_servicer: health.HealthServicer, service_names: Iterable[str]) -> None:
    status = health_pb2.HealthCheckResponse.SERVING
    health_servicer.set("", status)
    for name in service_names:
        health_servicer.set(name, status)


def serve(
    registrations: list[Registration],
    host: str,
    port: int,
    *,
    on_stop: Callable[[], None] | None = None,
    max_workers: int = 16,
) -> None:
    """Run a server until SIGINT/SIGTERM; report SERVING only once it listens."""
    server, health_servicer = build_server(registrations, host, port, max_workers)
    server.start()
    set_serving(health_servicer, [name for _, _, name in registrations])
    log.info("serving %s on %s:%d", ", ".join(n for _, _, n in registrations), host, port)
    stopped = threading.Event()

    def _stop(signum: int, _frame: Any) -> None:
        log.info("signal %d: shutting down", signum)
        health_servicer.enter_graceful_shutdown()
        stopped.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    stopped.wait()
    if on_stop is not None:
        on_stop()
    server.stop(grace=5).wait()


def channel(address: str) -> grpc.Channel:
    """A plaintext channel with the same message-size bounds as the servers."""
    return grpc.insecure_channel(address, options=CHANNEL_OPTIONS)


def wait_healthy(address: str, timeout: float, service: str = "") -> None:
    """Block until the server at ``address`` reports SERVING, or raise TimeoutError."""
    import time

    deadline = time.monotonic() + timeout
    last_error = "no answer"
    with channel(address) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while time.monotonic() < deadline:
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
                last_error = f"status {reply.status}"
            except grpc.RpcError as err:
                last_error = err.code().name
            time.sleep(0.2)
    raise TimeoutError(f"{address} not healthy after {timeout:.0f}s ({last_error})")
