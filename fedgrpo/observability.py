"""Metrics and logs every fedgrpo service exposes, defined in one place.

Metrics live on prometheus_client's default registry, all named ``fedgrpo_*``.
``start_metrics_server(port, host)`` serves them at ``http://<host>:<port>/metrics``
(port 0: no server, returns None; a taken port exits naming ``--metrics-port``);
the endpoint has no authentication, so ``host`` defaults to loopback
(``--metrics-host`` chooses another interface).
``MetricsInterceptor()`` goes into ``grpc.server(interceptors=[...])`` and
records, for every RPC of every arity, its server-side seconds in
``fedgrpo_rpc_seconds{service,method}`` and, when it ends with a non-OK status,
one ``fedgrpo_rpc_errors_total{service,method,code}`` (code: the StatusCode
name; an exception without an abort counts as UNKNOWN). The health Watch
stream passes through untimed: wrapping it would drop its non-blocking flag
and make each open stream hold a worker thread. The remaining metrics
are set by the services themselves (orchestrator steps, rewards, queue depths,
trainer and reward-client work).

``setup_logging(level, name, fmt)`` configures the root logger on stderr:
``text`` is ``<time> <LEVEL> <name> <logger>: <message>``; ``json`` is one
object per line with keys timestamp, level, service, logger, message plus every
``extra=`` field of the call. Calling it again replaces the previous setup.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, Literal

import grpc
from prometheus_client import Counter, Gauge, Histogram, start_http_server
from pythonjsonlogger.json import JsonFormatter

# From a 1 ms health check to a 10 minute training step or rollout.
SECONDS_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
)

RPC_SECONDS = Histogram(
    "fedgrpo_rpc_seconds", "Server-side latency of each RPC.", ["service", "method"], buckets=SECONDS_BUCKETS
)
RPC_ERRORS = Counter(
    "fedgrpo_rpc_errors_total", "RPCs that ended with a non-OK status.", ["service", "method", "code"]
)
STEP_PHASE_SECONDS = Histogram(
    "fedgrpo_step_phase_seconds", "Seconds per phase of a training step (generate, score, train, sync, step).",
    ["phase"], buckets=SECONDS_BUCKETS,
)
REWARDS = Counter(
    "fedgrpo_rewards_total", "Rewards received per reward client (accepted|dropped).", ["client", "outcome"]
)
POLICY_VERSION = Gauge("fedgrpo_policy_version", "Version of the policy being served or trained.")
QUEUE_DEPTH = Gauge(
    "fedgrpo_queue_depth", "Items waiting (runs: queued runs; tasks: scoring tasks for joined clients).", ["queue"]
)
STEPS = Counter("fedgrpo_steps_total", "Training steps finished (completed|replayed).", ["outcome"])
CLIENTS_LIVE = Gauge("fedgrpo_reward_clients_live", "Reward clients currently answering.")
SCORES = Counter("fedgrpo_scores_total", "Questions scored by this reward client.", ["evaluator"])
JOINS = Counter(
    "fedgrpo_joins_total",
    "Joins at the federation port (changed: new or changed description, queued for the store and probing; "
    "unchanged: a rejoin with the same description, nothing queued; refused: past --join-rate-limit).",
    ["outcome"],
)
TRAIN_SECONDS = Histogram("fedgrpo_train_seconds", "Seconds of one Train call.", buckets=SECONDS_BUCKETS)


def start_metrics_server(port: int, host: str = "127.0.0.1") -> int | None:
    """Serve /metrics on ``host:port`` from a daemon thread; port 0 disables it."""
    if port == 0:
        return None
    try:
        start_http_server(port, addr=host)
    except OSError as err:
        raise SystemExit(
            f"cannot serve metrics on {host}:{port} ({err.strerror or err}); "
            f"pick a free port with --metrics-port (or another --metrics-host), or 0 to disable metrics"
        ) from err
    return port


def _split_method(full: str) -> tuple[str, str]:
    # "/fedgrpo.v1.OrchestratorService/CreateRun" -> ("fedgrpo.v1.OrchestratorService", "CreateRun")
    service, _, method = full.lstrip("/").rpartition("/")
    return service or "unknown", method or "unknown"


def _failed_code(context: grpc.ServicerContext) -> str:
    # After an exception grpc sends the code the handler set (abort sets it), else UNKNOWN.
    code = context.code()
    return code.name if code is not None and code != grpc.StatusCode.OK else "UNKNOWN"


def _returned_code(context: grpc.ServicerContext) -> str:
    # A handler may fail without raising: context.set_code(NOT_FOUND); return Empty().
    code = context.code()
    return "OK" if code is None else code.name


# Non-blocking as registered: wrapped, each open stream would hold a worker thread.
HEALTH_WATCH = "/grpc.health.v1.Health/Watch"


class MetricsInterceptor(grpc.ServerInterceptor):
    """Times every RPC and counts the ones that end with a non-OK status."""

    def intercept_service(self, continuation: Callable, handler_call_details: grpc.HandlerCallDetails):
        handler = continuation(handler_call_details)
        if handler is None or handler_call_details.method == HEALTH_WATCH:
            return handler
        service, method = _split_method(handler_call_details.method)
        seconds = RPC_SECONDS.labels(service, method)

        def done(start: float, code: str) -> None:
            seconds.observe(time.perf_counter() - start)
            if code != "OK":
                RPC_ERRORS.labels(service, method, code).inc()

        def unary_response(behaviour: Callable) -> Callable:
            def wrapped(request_or_iterator: Any, context: grpc.ServicerContext) -> Any:
                start = time.perf_counter()
                try:
                    response = behaviour(request_or_iterator, context)
                except BaseException:
                    done(start, _failed_code(context))
                    raise
                done(start, _returned_code(context))
                return response
            return wrapped

        def stream_response(behaviour: Callable) -> Callable:
            # The RPC lasts until its last message is sent, so time the whole iteration.
            def wrapped(request_or_iterator: Any, context: grpc.ServicerContext) -> Iterator:
                start = time.perf_counter()
                try:
                    yield from behaviour(request_or_iterator, context)
                except GeneratorExit:
                    # grpc stops pulling (and drops the iterator) once the client has gone away.
                    done(start, "CANCELLED")
                    raise
                except BaseException:
                    done(start, _failed_code(context))
                    raise
                done(start, _returned_code(context))
            return wrapped

        serializers = dict(
            request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
        )
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(unary_response(handler.unary_unary), **serializers)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(stream_response(handler.unary_stream), **serializers)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(unary_response(handler.stream_unary), **serializers)
        if handler.stream_stream:
            return grpc.stream_stream_rpc_method_handler(stream_response(handler.stream_stream), **serializers)
        return handler


def setup_logging(level: str = "INFO", name: str = "", fmt: Literal["text", "json"] = "text") -> None:
    """Send every log record to stderr as text lines or JSON objects, replacing earlier setup."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter(
            ["levelname", "name", "message"],
            rename_fields={"levelname": "level", "name": "logger"},
            static_fields={"service": name},
            timestamp=True,
        ))
    elif fmt == "text":
        service = f"{name} " if name else ""
        handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s {service}%(name)s: %(message)s"))
    else:
        raise ValueError(f"log format: expected 'text' or 'json', got {fmt!r}")
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), handlers=[handler], force=True)
