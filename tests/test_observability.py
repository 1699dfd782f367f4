"""Metrics and logs: a real gRPC server with the interceptor, a real /metrics endpoint."""

from __future__ import annotations

import json
import logging
import re
import socket
import time
import urllib.request
from concurrent import futures
from datetime import datetime

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY

from fedgrpo.observability import MetricsInterceptor, setup_logging, start_metrics_server

SERVICE = "fedgrpo.test.Echo"


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def rpc_count(method: str, service: str = SERVICE) -> float:
    return sample("fedgrpo_rpc_seconds_count", service=service, method=method)


def errors(method: str, code: str) -> float:
    return sample("fedgrpo_rpc_errors_total", service=SERVICE, method=method, code=code)


def check(request: str, context: grpc.ServicerContext) -> str:
    if not request:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "request: expected a non-empty string")
    return request.upper()


def count(request: str, context: grpc.ServicerContext):
    for i in range(int(request)):
        time.sleep(0.1)
        yield str(i)


def forever(request: str, context: grpc.ServicerContext):
    while True:
        yield "tick"
        time.sleep(0.01)


def crash(request: str, context: grpc.ServicerContext) -> str:
    raise RuntimeError("bug")


def join(requests, context: grpc.ServicerContext) -> str:
    return ",".join(requests)


def echo(requests, context: grpc.ServicerContext):
    yield from requests


def not_found(request: str, context: grpc.ServicerContext) -> str:
    context.set_code(grpc.StatusCode.NOT_FOUND)
    context.set_details("no such thing")
    return ""


# Strings on the wire: if the interceptor dropped the (de)serializers, handlers would get bytes
# and grpc could not serialize their str answers.
WIRE = dict(request_deserializer=bytes.decode, response_serializer=str.encode)


@pytest.fixture(scope="module")
def channel():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), interceptors=[MetricsInterceptor()])
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, {
        "Check": grpc.unary_unary_rpc_method_handler(check, **WIRE),
        "Count": grpc.unary_stream_rpc_method_handler(count, **WIRE),
        "Forever": grpc.unary_stream_rpc_method_handler(forever, **WIRE),
        "Crash": grpc.unary_unary_rpc_method_handler(crash, **WIRE),
        "Join": grpc.stream_unary_rpc_method_handler(join, **WIRE),
        "Echo": grpc.stream_stream_rpc_method_handler(echo, **WIRE),
        "NotFound": grpc.unary_unary_rpc_method_handler(not_found, **WIRE),
    })])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        yield ch
    server.stop(None)


def call(channel: grpc.Channel, kind: str, method: str):
    return getattr(channel, kind)(f"/{SERVICE}/{method}", request_serializer=str.encode,
                                  response_deserializer=bytes.decode)


def test_unary_rpc_is_timed_and_an_abort_is_counted_with_its_code(channel):
    before, failed = rpc_count("Check"), errors("Check", "INVALID_ARGUMENT")
    assert call(channel, "unary_unary", "Check")("abc", timeout=5) == "ABC"
    assert rpc_count("Check") == before + 1
    assert errors("Check", "INVALID_ARGUMENT") == failed

    with pytest.raises(grpc.RpcError) as err:
        call(channel, "unary_unary", "Check")("", timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert rpc_count("Check") == before + 2
    assert errors("Check", "INVALID_ARGUMENT") == failed + 1
    assert errors("Check", "UNKNOWN") == 0


def test_exception_counts_as_unknown_and_set_code_counts_without_raising(channel):
    before = errors("Crash", "UNKNOWN")
    with pytest.raises(grpc.RpcError) as err:
        call(channel, "unary_unary", "Crash")("x", timeout=5)
    assert err.value.code() == grpc.StatusCode.UNKNOWN
    assert errors("Crash", "UNKNOWN") == before + 1

    before = errors("NotFound", "NOT_FOUND")
    with pytest.raises(grpc.RpcError) as err:
        call(channel, "unary_unary", "NotFound")("x", timeout=5)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert errors("NotFound", "NOT_FOUND") == before + 1


def test_unary_stream_is_timed_once_for_the_whole_stream(channel):
    before, seconds = rpc_count("Count"), sample("fedgrpo_rpc_seconds_sum", service=SERVICE, method="Count")
    assert list(call(channel, "unary_stream", "Count")("3", timeout=5)) == ["0", "1", "2"]
    assert rpc_count("Count") == before + 1
    # Three messages 0.1 s apart: the RPC lasts until the last one, not until the generator is created.
    assert sample("fedgrpo_rpc_seconds_sum", service=SERVICE, method="Count") - seconds >= 0.25
    assert errors("Count", "UNKNOWN") == 0


def test_stream_cancelled_by_the_client_is_counted_as_cancelled(channel):
    before = errors("Forever", "CANCELLED")
    stream = call(channel, "unary_stream", "Forever")("", timeout=5)
    assert next(stream) == "tick"
    stream.cancel()
    deadline = time.monotonic() + 5
    while errors("Forever", "CANCELLED") == before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert errors("Forever", "CANCELLED") == before + 1


def test_client_streaming_rpcs_are_timed(channel):
    joined, echoed = rpc_count("Join"), rpc_count("Echo")
    assert call(channel, "stream_unary", "Join")(iter(["a", "b"]), timeout=5) == "a,b"
    assert list(call(channel, "stream_stream", "Echo")(iter(["a", "b"]), timeout=5)) == ["a", "b"]
    assert rpc_count("Join") == joined + 1
    assert rpc_count("Echo") == echoed + 1


def test_registered_servicers_are_timed_and_unknown_methods_pass_through(channel):
    service = "grpc.health.v1.Health"
    before = rpc_count("Check", service)
    stub = health_pb2_grpc.HealthStub(channel)
    assert stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status == (
        health_pb2.HealthCheckResponse.SERVING
    )
    assert rpc_count("Check", service) == before + 1

    with pytest.raises(grpc.RpcError) as err:
        call(channel, "unary_unary", "Missing")("x", timeout=5)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert REGISTRY.get_sample_value("fedgrpo_rpc_seconds_count", {"service": SERVICE, "method": "Missing"}) is None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_metrics_endpoint_serves_the_fedgrpo_metrics(channel):
    call(channel, "unary_unary", "Check")("abc", timeout=5)
    port = free_port()
    assert start_metrics_server(port, host="127.0.0.1") == port
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    assert f'fedgrpo_rpc_seconds_count{{method="Check",service="{SERVICE}"}}' in text
    assert "fedgrpo_step_phase_seconds" in text


def test_metrics_port_zero_disables_and_a_taken_port_names_the_flag():
    assert start_metrics_server(0) is None
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SystemExit) as exit_:
            start_metrics_server(port, host="127.0.0.1")
    assert "--metrics-port" in str(exit_.value.code)
    assert str(port) in str(exit_.value.code)


@pytest.fixture
def restore_root_logger():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_logs_are_one_object_per_line_with_extra_fields(capsys, restore_root_logger):
    setup_logging("INFO", "orchestrator", "json")
    log = logging.getLogger("fedgrpo.test")
    log.debug("hidden")
    log.info("step %d done", 3, extra={"run_id": "r1", "step": 3})
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    record = json.loads(lines[0])
    assert record["message"] == "step 3 done"
    assert record["level"] == "INFO"
    assert record["service"] == "orchestrator"
    assert record["logger"] == "fedgrpo.test"
    assert record["run_id"] == "r1" and record["step"] == 3
    assert datetime.fromisoformat(record["timestamp"]).tzinfo is not None


def test_text_logs_keep_the_service_format_and_setup_can_be_repeated(capsys, restore_root_logger):
    setup_logging("DEBUG", "trainer")
    setup_logging("WARNING", "trainer", "text")
    log = logging.getLogger("fedgrpo.test")
    log.info("hidden")
    log.warning("disk %s", "full")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} WARNING trainer fedgrpo\.test: disk full", lines[0])
