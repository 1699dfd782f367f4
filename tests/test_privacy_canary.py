"""Canary: labels never leave a reward client.

Two clients hold labels that are unique random markers. After a real run on those questions (the server
holds them without answers), no marker appears in the bytes that crossed between orchestrator and clients
(recorded by a plaintext relay), nor in the orchestrator's or trainer's logs, run folder, store or
checkpoints. The relay's recording is checked to hold the questions, so an empty recording cannot pass."""

from __future__ import annotations

import json
import secrets

import pytest

from fedgrpo import serving
from fedgrpo.job.launcher import Federation
from fedgrpo.job.wire import ByteCountingRelay
from fedgrpo.v1 import orchestrator_pb2 as pb
from fedgrpo.v1 import orchestrator_pb2_grpc

from .conftest import START_TIMEOUT
from .test_join import run_to_end, steps_of

pytestmark = pytest.mark.integration


def every_byte_under(folder) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_no_label_crosses_the_wire_or_lands_on_the_server(tmp_path, model_cache):
    questions = [f"Which vault code opens door {i}?" for i in range(6)]
    markers = [f"CANARY-{secrets.token_hex(12)}" for _ in questions]
    server_file = tmp_path / "server" / "vault.jsonl"
    server_file.parent.mkdir()
    server_file.write_text("".join(json.dumps({"question": q, "domain": "vault"}) + "\n" for q in questions))
    labels = tmp_path / "org" / "labels.jsonl"
    labels.parent.mkdir()
    labels.write_text("".join(
        json.dumps({"question": q, "answer": m, "domain": "vault"}) + "\n" for q, m in zip(questions, markers)
    ))
    common = ["--model", "tiny-policy", "--cache-dir", str(model_cache), "--log-level", "DEBUG"]
    relays: list[ByteCountingRelay] = []
    try:
        with Federation(tmp_path / "logs") as fed:
            trainer = fed.start("trainer", "trainer", [*common, "--state-dir", str(tmp_path / "trainer")])
            clients = [
                fed.start(f"client-{i}", "reward-client",
                          ["--name", f"client-{i}", "--labels", str(labels), "--checker", "exact"])
                for i in range(2)
            ]
            for service in (trainer, *clients):
                fed.wait_healthy(service, START_TIMEOUT)
            relays = [ByteCountingRelay(c.address, record=True).start() for c in clients]
            orchestrator = fed.start("orchestrator", "orchestrator", [
                *common, "--runs-dir", str(tmp_path / "runs"), "--trainer", trainer.address,
                "--backend", "transformers", "--max-model-len", "512", "--client-wait-seconds", "30",
                "--reward-clients", ",".join(r.address for r in relays), "--no-confidence-graph",
                "--dataset", f"vault={server_file}",
            ])
            fed.wait_healthy(orchestrator, START_TIMEOUT)
            with serving.channel(orchestrator.address, None) as channel:
                stub = orchestrator_pb2_grpc.OrchestratorServiceStub(channel)
                run = stub.CreateRun(pb.CreateRunRequest(spec=pb.RunSpec(
                    dataset="vault", steps=2, questions_per_step=3, candidates_per_question=4,
                    experts_per_question=2, max_tokens=12,
                )))
                run = run_to_end(stub, run.run_id)
    finally:
        for relay in relays:
            relay.close()
    assert run.state == pb.RUN_STATE_SUCCEEDED, run.error
    assert [s["rewards_by_client"] for s in steps_of(run)] == [{"client-0": 12, "client-1": 12}] * 2

    crossed = {f"{r.target} {direction}": data for r in relays for direction, data in zip(("sent", "received"),
                                                                                            r.recorded())}
    assert all(crossed.values()), "the relay recorded nothing: it could not see a label cross"
    sent = b"".join(data for name, data in crossed.items() if name.endswith("sent"))
    assert sum(q.encode() in sent for q in questions) >= 3  # the questions do cross, in the clear
    server_side = {
        **crossed,
        **every_byte_under(tmp_path / "runs"),
        **every_byte_under(tmp_path / "trainer"),
        "orchestrator.log": (tmp_path / "logs" / "orchestrator.log").read_bytes(),
        "trainer.log": (tmp_path / "logs" / "trainer.log").read_bytes(),
    }
    leaks = [(where, m) for where, data in server_side.items() for m in markers if m.encode() in data]
    assert leaks == [], leaks
    assert all(m.encode() in labels.read_bytes() for m in markers)  # they were there to leak
