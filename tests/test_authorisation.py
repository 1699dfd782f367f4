"""Authorisation attacks performed against real processes speaking mutual TLS.

One federation (a development CA from `fedgrpo.certs`, a trainer, an
orchestrator dialing two reward clients): ``client-0`` is honest; the process
dialed as ``client-1`` holds the certificate of ``intruder`` but names itself
``client-1`` in Describe. A second member, ``intruder``, attacks:

- the label oracle: it sends a known question with candidates "0".."255" to a
  reward client's Score and would read the label from the one scoring high;
- a Score request with unbounded fields, to make a judge read unbounded text;
- posing under another name as a dialed client;
- names with a trailing newline, which ``re.match`` with ``$`` accepted.
"""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fedgrpo import serving
from fedgrpo.certs import init_federation
from fedgrpo.security import Identity
from fedgrpo.v1 import federation_pb2 as fpb
from fedgrpo.v1 import federation_pb2_grpc as fpb_grpc
from fedgrpo.v1 import orchestrator_pb2 as pb
from fedgrpo.v1 import policy_trainer_pb2 as tpb
from fedgrpo.v1 import policy_trainer_pb2_grpc as tpb_grpc
from fedgrpo.v1 import reward_client_pb2 as rpb
from fedgrpo.v1 import reward_client_pb2_grpc as rpb_grpc

from .conftest import federation

pytestmark = pytest.mark.integration

# The first add1 question of the bank with seed 0 (--bank-size 200); its label is 8.
QUESTION = rpb.ScoreRequest(question_id="43bead00b92fbde7", question="Calculate 1 + 7.", domain="add1")
ORACLE = [str(i) for i in range(256)]


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("certs")
    init_federation(folder, clients=["client-0", "client-1", "intruder"])
    return folder


@pytest.fixture(scope="module")
def fed(tmp_path_factory, model_cache, certs):
    tmp = tmp_path_factory.mktemp("authorisation")
    with federation(
        tmp, model_cache, clients=[("add1", []), ("add1", [])], certs=certs, identities={"client-1": "intruder"},
        orchestrator_args=["--client-wait-seconds", "3", "--auxiliary-size", "10", "--auxiliary-domains", "add1"],
    ) as running:
        yield running


def as_(certs, name: str) -> Identity:
    return Identity.in_dir(certs, name)


def refusal(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value


def test_another_member_cannot_read_labels_from_scores(fed, certs):
    _, _, services = fed
    oracle = rpb.ScoreRequest(**{f.name: v for f, v in QUESTION.ListFields()}, candidates=ORACLE)
    with serving.channel(services["client-0"].address, as_(certs, "intruder")) as ch:
        client = rpb_grpc.RewardClientServiceStub(ch)
        for call in (lambda: client.Score(oracle, timeout=30), lambda: client.Describe(rpb.DescribeRequest(), timeout=30)):
            denied = refusal(call)
            assert denied.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "'intruder'" in denied.details() and "only orchestrator may" in denied.details()
        # Health stays open to any member (orchestration tools probe it).
        health = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=30)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
    # The orchestrator may: the same call is the oracle it would have been (only "8" scores top).
    with serving.channel(services["client-0"].address, as_(certs, "orchestrator")) as ch:
        rewards = list(rpb_grpc.RewardClientServiceStub(ch).Score(oracle, timeout=30).rewards)
    assert [ORACLE[i] for i, r in enumerate(rewards) if r == max(rewards)] == ["8"]


@pytest.mark.parametrize(
    ("field", "change"),
    [
        ("question", {"question": "Calculate 1 + 7." + " " * 8_177}),  # 8,193 characters, default bound 8,192
        ("domain", {"domain": "a" * 65}),
        ("question_id", {"question_id": "q" * 257}),
        ("run_id", {"run_id": "r" * 257}),
        ("candidates", {"candidates": ["8"] * 257}),
        ("candidates[1]", {"candidates": ["8", "8" * 16_385]}),
    ],
)
def test_score_fields_are_bounded(fed, certs, field, change):
    _, _, services = fed
    fields = {f.name: v for f, v in QUESTION.ListFields()} | {"candidates": ["8"]} | change
    with serving.channel(services["client-0"].address, as_(certs, "orchestrator")) as ch:
        refused = refusal(lambda: rpb_grpc.RewardClientServiceStub(ch).Score(rpb.ScoreRequest(**fields), timeout=30))
    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.details().startswith(f"{field}: ")


def test_a_dialed_client_is_kept_out_unless_its_certificate_names_it(fed):
    stub, _, services = fed
    listed = {c.address: (c.name, c.healthy) for c in stub.ListRewardClients(pb.ListRewardClientsRequest()).clients}
    assert listed[services["client-0"].address] == ("client-0", True)
    name, healthy = listed[services["client-1"].address]
    assert name != "client-1" and healthy is False
    log = services["orchestrator"].log_path.read_text()
    assert "names itself 'client-1' in Describe but its certificate's identity is 'intruder'" in log


def test_names_with_a_trailing_newline_are_refused(fed, certs):
    stub, _, services = fed
    with serving.channel(services["orchestrator"].federation_address, as_(certs, "intruder")) as ch:
        join = fpb_grpc.FederationServiceStub(ch).Join
        description = rpb.DescribeResponse(name="intruder\n", domains=["add1"], evaluator_kinds=[1], reward_max=1)
        refused = refusal(lambda: join(fpb.JoinRequest(description=description), timeout=30))
    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.details().startswith("description.name: ")
    assert "intruder" not in {c.name for c in stub.ListRewardClients(pb.ListRewardClientsRequest()).clients}
    with serving.channel(services["trainer"].address, as_(certs, "orchestrator")) as ch:
        trainer = tpb_grpc.PolicyTrainerServiceStub(ch)
        refused = refusal(lambda: trainer.GetPolicyVersion(tpb.GetPolicyVersionRequest(run_id="run\n"), timeout=30))
    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.details().startswith("run_id: ")
