"""gRPC plumbing shared by every fedgrpo service.

``serve(settings, endpoints)`` starts one server per ``Endpoint`` (a port,
its servicers, and who may call it) with the standard gRPC health service
(every service reports SERVING once started; its Watch streams are
non-blocking and hold no worker thread), server reflection (v1 and v1alpha,
with the protos' comments; ``fedgrpo.reflection``) only where
``settings.reflection`` asks for it, the request ``Guard`` (tokens,
identities, rates, undecodable requests; see ``fedgrpo.security``), RPC
metrics, at most ``max_concurrent_rpcs`` calls at once per port (more are
RESOURCE_EXHAUSTED at once, never queued behind calls that do not end), and
TLS from the settings' identity
(mutual TLS where the endpoint requires client certificates); it blocks until
SIGINT/SIGTERM, then drains in-flight calls. Ports are never shared: gRPC's
default SO_REUSEPORT would let a second service bind a port in use and take
some of its connections (health checks then reach the wrong process), so a
taken port refuses the start with a message naming the flag and env var. ``channel()`` dials a service
with the same identity and message bounds. ``invalid()`` / ``not_found()``
/ ``failed_precondition()`` / ``refuse()`` abort an RPC with a status whose
message names the offending field, so callers always learn what to fix, and
whose ``google.rpc`` details say it as data (``fedgrpo.rpc_errors``:
ErrorInfo always, a BadRequest field violation for INVALID_ARGUMENT).
"""

from __future__ import annotations

import logging
import random
import signal
import threading
import time
from collections.abc import Callable, Collection, Iterable
from concurrent import futures
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from fedgrpo import reflection
from fedgrpo.rpc_errors import abort
from fedgrpo.security import Guard, Identity, with_token

if TYPE_CHECKING:
    from fedgrpo.settings import ServiceSettings

log = logging.getLogger(__name__)

# Servicer registration: (add_XServicer_to_server, servicer instance, full service name).
Registration = tuple[Callable[[Any, grpc.Server], None], Any, str]

# Default bound of a message on channels; services set theirs (max_message_bytes).
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def message_options(max_bytes: int = MAX_MESSAGE_BYTES) -> list[tuple[str, int]]:
    return [("grpc.max_send_message_length", max_bytes), ("grpc.max_receive_message_length", max_bytes)]


# A server owns its port alone (gRPC Python sets SO_REUSEPORT unless told not to).
SERVER_OPTIONS = [("grpc.so_reuseport", 0)]

# How soon a channel tries again to reach a peer that was down. gRPC's default backoff grows to 120 s,
# and while it waits every call fails at once with UNAVAILABLE: a trainer back after 20 s would then go
# unseen for longer than a run's retry window (--trainer-retry-seconds). Peers here are few and known,
# so trying again every second at most costs nothing.
RECONNECT_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.min_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


@dataclass
class Endpoint:
    """One listening port of a service and who may call it."""

    registrations: list[Registration]
    port: int
    # Require a certificate signed by the federation CA (mutual TLS); off for public APIs.
    client_auth: bool = True
    # Bearer tokens accepted; empty: no token is asked for.
    tokens: Collection[str] = ()
    # Certificate identities allowed to call; empty: any the CA signed.
    allowed_peers: Collection[str] = ()
    # Roles (fedgrpo.certs.ROLES) a caller's certificate must carry; empty: any, or none.
    allowed_roles: Collection[str] = ()
    # The settings field that sets ``port`` (named, with its env var, when the port is taken).
    port_field: str = "port"


def invalid(context: grpc.ServicerContext, field: str, problem: str, reason: str = "INVALID_FIELD") -> NoReturn:
    """Abort with INVALID_ARGUMENT naming the request field and what was expected (message and BadRequest)."""
    abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"{field}: {problem}", reason=reason, field=field,
          problem=problem)


def not_found(context: grpc.ServicerContext, what: str, reason: str = "NOT_FOUND") -> NoReturn:
    abort(context, grpc.StatusCode.NOT_FOUND, what, reason=reason)


def failed_precondition(context: grpc.ServicerContext, what: str, reason: str = "FAILED_PRECONDITION") -> NoReturn:
    abort(context, grpc.StatusCode.FAILED_PRECONDITION, what, reason=reason)


def refuse(context: grpc.ServicerContext, code: grpc.StatusCode, what: str, reason: str | None = None,
           field: str | None = None) -> NoReturn:
    """Abort with any other status (ALREADY_EXISTS, PERMISSION_DENIED, ...); ErrorInfo's reason defaults to
    the code's name, ``field`` goes into its metadata."""
    abort(context, code, what, reason=reason, field=field)


def build_server(
    endpoint: Endpoint, settings: ServiceSettings, max_workers: int = 16
) -> tuple[grpc.Server, health.HealthServicer]:
    """A server for ``endpoint``, not yet started, with health, guard, metrics and reflection if asked for."""
    from fedgrpo.observability import MetricsInterceptor

    identity = settings.identity()
    guard = Guard(
        tokens=endpoint.tokens,
        # Identities come from certificates: with plaintext (loopback development) there are none to check.
        allowed_peers=endpoint.allowed_peers if identity is not None else (),
        allowed_roles=endpoint.allowed_roles if identity is not None else (),
        rate_limit=settings.rate_limit, service_label=str(endpoint.port),
        auth_failure_limit=settings.auth_failure_limit,
    )
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers),
        interceptors=[MetricsInterceptor(), guard],
        options=[*message_options(settings.max_message_bytes), *SERVER_OPTIONS],
        # Beyond it calls are refused, not queued without bound behind calls that may never end.
        maximum_concurrent_rpcs=settings.max_concurrent_rpcs,
    )
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [health.SERVICE_NAME]
    for add, servicer, name in endpoint.registrations:
        add(servicer, server)
        names.append(name)
    if settings.reflection:
        reflection.enable(names, server)
    address = f"{settings.host}:{endpoint.port}"
    try:
        if identity is None:
            bound = server.add_insecure_port(address)
        else:
            bound = server.add_secure_port(address, identity.server_credentials(endpoint.client_auth))
    except RuntimeError:  # grpcio >= 1.5x raises where older versions returned 0
        bound = 0
    if bound == 0:
        field = endpoint.port_field
        how = f"--{field.replace('_', '-')} / {settings.model_config.get('env_prefix', '')}{field.upper()}"
        raise SystemExit(
            f"cannot listen on {address}: port {endpoint.port} is in use by another process (or {settings.host!r} "
            f"is not an address of this host); choose another port with {how}"
        )
    return server, health_servicer


def set_serving(health_servicer: health.HealthServicer, service_names: Iterable[str]) -> None:
    status = health_pb2.HealthCheckResponse.SERVING
    health_servicer.set("", status)
    for name in service_names:
        health_servicer.set(name, status)


def serve(
    settings: ServiceSettings,
    endpoints: list[Endpoint],
    *,
    on_stop: Callable[[], None] | None = None,
    max_workers: int = 16,
) -> None:
    """Run the endpoints until SIGINT/SIGTERM; report SERVING only once all listen."""
    from fedgrpo.observability import start_metrics_server

    built = [(e, *build_server(e, settings, max_workers)) for e in endpoints]
    for _, server, _ in built:
        server.start()
    for endpoint, _, health_servicer in built:
        set_serving(health_servicer, [name for _, _, name in endpoint.registrations])
        log.info(
            "serving %s on %s:%d (%s)", ", ".join(n for _, _, n in endpoint.registrations), settings.host,
            endpoint.port,
            "plaintext" if settings.plaintext else "mutual TLS" if endpoint.client_auth else "TLS",
        )
    if start_metrics_server(settings.metrics_port, settings.metrics_host) is not None:
        log.info("Prometheus metrics on %s:%d/metrics", settings.metrics_host, settings.metrics_port)
    stopped = threading.Event()

    def _stop(signum: int, _frame: Any) -> None:
        log.info("signal %d: shutting down", signum)
        for _, _, health_servicer in built:
            health_servicer.enter_graceful_shutdown()
        stopped.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    stopped.wait()
    if on_stop is not None:
        on_stop()
    for _, server, _ in built:
        server.stop(grace=5)
    for _, server, _ in built:
        server.wait_for_termination(timeout=6)


# Statuses worth retrying: the peer is unreachable or late, or asked us to slow down.
TRANSIENT_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
RETRYABLE_CODES = TRANSIENT_CODES | {grpc.StatusCode.RESOURCE_EXHAUSTED}


def retry_backoff(attempt: int, base: float = 0.5, cap: float = 10.0) -> float:
    """Seconds before retry ``attempt`` (0-based): full jitter under an exponential ceiling."""
    return random.uniform(0, min(cap, base * 2**attempt))


def channel(
    address: str, identity: Identity | None = None, token: str | None = None, max_message_bytes: int = MAX_MESSAGE_BYTES
) -> grpc.Channel:
    """A channel to a fedgrpo service: TLS with ``identity`` (plaintext without), bearer ``token`` if given;
    it tries a peer that was down again within a second (``RECONNECT_OPTIONS``)."""
    options = message_options(max_message_bytes) + RECONNECT_OPTIONS
    if identity is None:
        ch = grpc.insecure_channel(address, options=options)
    else:
        ch = grpc.secure_channel(address, identity.channel_credentials(), options=options)
    return with_token(ch, token)


def wait_healthy(address: str, timeout: float, service: str = "", identity: Identity | None = None) -> None:
    """Block until the server at ``address`` reports SERVING, or raise TimeoutError."""
    deadline = time.monotonic() + timeout
    last_error = "no answer"
    with channel(address, identity) as ch:
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
