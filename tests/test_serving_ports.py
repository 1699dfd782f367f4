"""A port has one owner: a second fedgrpo server on a port in use refuses to
start and says which flag and env var move it (gRPC Python would otherwise
share the port through SO_REUSEPORT, and health checks could reach either)."""

from __future__ import annotations

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fedgrpo import serving
from fedgrpo.job.launcher import free_port
from fedgrpo.services.orchestrator.config import OrchestratorSettings
from fedgrpo.services.policy_trainer.config import TrainerSettings


def test_a_second_server_on_a_taken_port_refuses_with_the_flag():
    port = free_port()
    settings = TrainerSettings(plaintext=True, port=port)
    first, health = serving.build_server(serving.Endpoint([], port), settings)
    first.start()
    try:
        serving.set_serving(health, [])
        with pytest.raises(SystemExit) as refused:
            second, _ = serving.build_server(serving.Endpoint([], port), settings)
            second.start()  # not reached with the fix: both would serve this port
            second.stop(None)
        message = str(refused.value)
        assert f"127.0.0.1:{port}" in message and "in use" in message
        assert "--port / FEDGRPO_TRAINER_PORT" in message
        # The first server still owns the port.
        with serving.channel(f"127.0.0.1:{port}") as ch:
            reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        first.stop(None)


def test_the_refusal_names_the_endpoints_own_flag():
    port = free_port()
    settings = OrchestratorSettings(plaintext=True, port=free_port(), federation_port=port)
    first, _ = serving.build_server(serving.Endpoint([], port), settings)
    first.start()
    try:
        with pytest.raises(SystemExit, match="--federation-port / FEDGRPO_ORCHESTRATOR_FEDERATION_PORT"):
            serving.build_server(serving.Endpoint([], port, port_field="federation_port"), settings)
    finally:
        first.stop(None)


def test_free_ports_come_from_the_workers_block_below_the_ephemeral_range(monkeypatch):
    import fedgrpo.job.launcher as launcher

    low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
    for worker, block in (("gw0", 10000), ("gw1", 12500), ("gw3", 17500)):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
        ports = {launcher.free_port() for _ in range(20)}
        assert len(ports) == 20 and all(block <= p < block + 2500 < low for p in ports)
