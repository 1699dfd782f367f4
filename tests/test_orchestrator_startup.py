"""Starting the orchestrator: `--help` documents the built-in models, the
engine's limits come from the model when not given, and settings the engine
cannot start with end in one line naming the flag, not in a traceback."""

from __future__ import annotations

import subprocess
import sys

import grpc
import pytest

from fedgrpo import serving
from fedgrpo.job.launcher import Federation, free_port
from fedgrpo.models import KNOWN_MODELS
from fedgrpo.v1 import orchestrator_pb2 as pb
from fedgrpo.v1 import orchestrator_pb2_grpc

from .conftest import START_TIMEOUT


def orchestrator(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fedgrpo.cli", "orchestrator", *args],
        capture_output=True, text=True, timeout=timeout,
    )


def test_help_lists_every_built_in_model():
    done = orchestrator("--help", timeout=120)
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())  # help wraps lines
    for name in KNOWN_MODELS:
        assert f"{name} = " in text, name


def test_an_impossible_max_model_len_is_one_line_naming_the_flag(tmp_path, model_cache):
    done = orchestrator(
        "--plaintext", "--model", "tiny-policy", "--cache-dir", str(model_cache), "--runs-dir", str(tmp_path),
        "--port", str(free_port()), "--federation-port", str(free_port()), "--trainer", "127.0.0.1:1",
        "--client-wait-seconds", "0", "--no-confidence-graph", "--backend", "vllm", "--max-model-len", "100000",
    )
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("fedgrpo orchestrator: --max-model-len: got 100000"), done.stderr[-3000:]
    assert "at most 512" in last


@pytest.mark.integration
def test_vllm_orchestrator_starts_on_the_tiny_model_without_max_model_len(tmp_path, model_cache):
    with Federation(tmp_path / "logs") as fed:
        service = fed.start("orchestrator", "orchestrator", [
            "--model", "tiny-policy", "--cache-dir", str(model_cache), "--runs-dir", str(tmp_path / "runs"),
            "--trainer", "127.0.0.1:1", "--client-wait-seconds", "0", "--no-confidence-graph", "--backend", "vllm",
        ])
        fed.wait_healthy(service, START_TIMEOUT)
        with serving.channel(service.address) as ch:
            stub = orchestrator_pb2_grpc.OrchestratorServiceStub(ch)
            reply = stub.Generate(pb.GenerateRequest(prompts=["What is 2 + 3?"], max_tokens=4))
            assert len(reply.results) == 1
            # The derived limit is the tiny model's 512 positions, and it bounds requests.
            with pytest.raises(grpc.RpcError) as refused:
                stub.Generate(pb.GenerateRequest(prompts=["What is 2 + 3?"], max_tokens=600))
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "expected 1 to 511" in refused.value.details()
