"""Shared fixtures: a tiny model built locally, and real services as processes.

``federation(...)`` starts a trainer, reward clients and an orchestrator as
separate processes on free loopback ports (the same launcher `fedgrpo run`
uses) with the tiny model, and stops them afterwards. Nothing is mocked:
faults are injected on purpose through the reward client's test settings.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest

from fedgrpo import serving
from fedgrpo.job.launcher import Federation
from fedgrpo.models import build_tiny_policy
from fedgrpo.v1 import orchestrator_pb2_grpc, policy_trainer_pb2_grpc, reward_client_pb2_grpc

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
START_TIMEOUT = 240.0


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory) -> Path:
    cache = tmp_path_factory.mktemp("models")
    build_tiny_policy(cache / "tiny-policy")
    return cache


@contextlib.contextmanager
def federation(
    tmp: Path,
    model_cache: Path,
    clients: list[tuple[str, list[str]]],
    backend: str = "transformers",
    trainer: bool = True,
    orchestrator_args: list[str] | None = None,
):
    """Yield (orchestrator stub, Federation, {name: Service}); clients are (domains, extra args)."""
    common = ["--model", "tiny-policy", "--cache-dir", str(model_cache), "--log-level", "INFO"]
    with Federation(tmp / "logs") as fed:
        services = {}
        if trainer:
            services["trainer"] = fed.start(
                "trainer", "trainer", [*common, "--state-dir", str(tmp / "trainer"), "--torch-threads", "1"]
            )
        for i, (domains, extra) in enumerate(clients):
            name = f"client-{i}"
            services[name] = fed.start(
                name, "reward-client", ["--name", name, "--domains", domains, "--bank-size", "200", *extra]
            )
        for s in services.values():
            fed.wait_healthy(s, START_TIMEOUT)
        trainer_address = services["trainer"].address if trainer else "127.0.0.1:1"
        services["orchestrator"] = fed.start(
            "orchestrator", "orchestrator",
            [*common, "--runs-dir", str(tmp / "runs"), "--trainer", trainer_address, "--backend", backend,
             "--max-model-len", "512", "--bank-size", "200", "--client-wait-seconds", "30",
             "--reward-clients", ",".join(s.address for n, s in services.items() if n.startswith("client")),
             *(orchestrator_args or [])],
        )
        fed.wait_healthy(services["orchestrator"], START_TIMEOUT)
        with serving.channel(services["orchestrator"].address) as ch:
            yield orchestrator_pb2_grpc.OrchestratorServiceStub(ch), fed, services


def trainer_stub(address: str):
    return policy_trainer_pb2_grpc.PolicyTrainerServiceStub(serving.channel(address))


def reward_stub(address: str):
    return reward_client_pb2_grpc.RewardClientServiceStub(serving.channel(address))
