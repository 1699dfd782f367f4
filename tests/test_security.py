"""Security with real processes speaking mutual TLS: who may call what.

One federation per module (a development CA from `fedgrpo.certs`, a trainer,
an orchestrator, a reward client that joins): callers without a certificate,
with one from another CA, under another's name, with a bad token, or
answering a task they were not sent are refused with the right status and
change nothing. Rate and size bounds are checked on a reward client.
"""

from __future__ import annotations

import grpc
import pytest

from fedgrpo import serving
from fedgrpo.certs import init_federation
from fedgrpo.job.launcher import Federation
from fedgrpo.security import Identity
from fedgrpo.v1 import federation_pb2 as fpb
from fedgrpo.v1 import federation_pb2_grpc as fpb_grpc
from fedgrpo.v1 import orchestrator_pb2 as pb
from fedgrpo.v1 import orchestrator_pb2_grpc as pb_grpc
from fedgrpo.v1 import policy_trainer_pb2 as tpb
from fedgrpo.v1 import reward_client_pb2 as rpb

from .conftest import federation, reward_stub, trainer_stub

pytestmark = pytest.mark.integration


def identity(certs, name: str) -> Identity:
    return Identity.in_dir(certs, name)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    certs = tmp_path_factory.mktemp("certs")
    init_federation(certs, clients=["joined-0", "intruder"])
    foreign = tmp_path_factory.mktemp("foreign")
    init_federation(foreign, clients=["joined-0"])
    return certs, foreign


@pytest.fixture(scope="module")
def secured(tmp_path_factory, model_cache, pki):
    certs, _ = pki
    tmp = tmp_path_factory.mktemp("secured")
    with federation(
        tmp, model_cache, clients=[], joined=[("add1", [])], certs=certs,
        orchestrator_args=["--auxiliary-size", "10", "--auxiliary-domains", "add1"],
    ) as (stub, fed, services):
        yield stub, fed, services


def code_of(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code()


def test_public_api_needs_a_valid_token(secured, pki):
    stub, fed, services = secured
    certs, _ = pki
    address = services["orchestrator"].address
    assert stub.ListRuns(pb.ListRunsRequest()) is not None  # with the token
    for token in (None, "x" * 43):
        with serving.channel(address, identity(certs, "orchestrator"), token=token) as ch:
            other = pb_grpc.OrchestratorServiceStub(ch)
            assert code_of(lambda: other.ListRuns(pb.ListRunsRequest(), timeout=10)) == grpc.StatusCode.UNAUTHENTICATED
            assert code_of(lambda: other.CreateRun(pb.CreateRunRequest(spec=pb.RunSpec(tasks=["add1"])), timeout=10)) \
                == grpc.StatusCode.UNAUTHENTICATED
    assert len(stub.ListRuns(pb.ListRunsRequest()).runs) == 0  # nothing was created


def test_plaintext_to_a_tls_port_fails(secured):
    _, _, services = secured
    with serving.channel(services["orchestrator"].address) as ch:
        stub = pb_grpc.OrchestratorServiceStub(ch)
        assert code_of(lambda: stub.ListRuns(pb.ListRunsRequest(), timeout=10)) == grpc.StatusCode.UNAVAILABLE


def test_federation_port_refuses_no_certificate_and_a_foreign_one(secured, pki):
    certs, foreign = pki
    _, _, services = secured
    address = services["orchestrator"].federation_address
    description = rpb.DescribeResponse(name="joined-0", domains=["add1"], evaluator_kinds=[1], reward_max=1)
    ca_only = grpc.ssl_channel_credentials(root_certificates=(certs / "ca.crt").read_bytes())
    with grpc.secure_channel(address, ca_only) as ch:
        join = fpb_grpc.FederationServiceStub(ch).Join
        assert code_of(lambda: join(fpb.JoinRequest(description=description), timeout=10)) == grpc.StatusCode.UNAVAILABLE
    stranger = Identity.load(foreign / "joined-0.crt", foreign / "joined-0.key", certs / "ca.crt")
    with serving.channel(address, stranger) as ch:
        join = fpb_grpc.FederationServiceStub(ch).Join
        assert code_of(lambda: join(fpb.JoinRequest(description=description), timeout=10)) == grpc.StatusCode.UNAVAILABLE


def test_a_client_cannot_join_under_another_name_nor_answer_tasks_it_was_not_sent(secured, pki):
    stub, _, services = secured
    certs, _ = pki
    with serving.channel(services["orchestrator"].federation_address, identity(certs, "intruder")) as ch:
        fed = fpb_grpc.FederationServiceStub(ch)
        posing = rpb.DescribeResponse(name="joined-0", domains=["add1"], evaluator_kinds=[1], reward_max=1)
        assert code_of(lambda: fed.Join(fpb.JoinRequest(description=posing), timeout=10)) \
            == grpc.StatusCode.PERMISSION_DENIED
        own = rpb.DescribeResponse(name="intruder", domains=["add1"], evaluator_kinds=[1], reward_max=1)
        session = fed.Join(fpb.JoinRequest(description=own), timeout=10).session_id
        forged = fpb.SubmitRewardsRequest(session_id=session, task_id="task-of-joined-0", rewards=[1.0, 1.0])
        assert code_of(lambda: fed.SubmitRewards(forged, timeout=10)) == grpc.StatusCode.PERMISSION_DENIED
        # Another client's session is not ours to use either.
        assert code_of(lambda: fed.Heartbeat(fpb.HeartbeatRequest(session_id="not-mine"), timeout=10)) \
            == grpc.StatusCode.NOT_FOUND
        fed.Leave(fpb.LeaveRequest(session_id=session), timeout=10)
    listed = {c.name: c.healthy for c in stub.ListRewardClients(pb.ListRewardClientsRequest()).clients}
    assert listed["joined-0"] is True and listed.get("intruder") is False


def test_only_the_orchestrator_identity_may_call_the_trainer(secured, pki):
    certs, _ = pki
    _, _, services = secured
    with serving.channel(services["trainer"].address, identity(certs, "intruder")) as ch:
        from fedgrpo.v1 import policy_trainer_pb2_grpc as tpb_grpc

        trainer = tpb_grpc.PolicyTrainerServiceStub(ch)
        call = lambda: trainer.GetPolicyVersion(tpb.GetPolicyVersionRequest(run_id="r"), timeout=10)  # noqa: E731
        assert code_of(call) == grpc.StatusCode.PERMISSION_DENIED
    assert trainer_stub  # plaintext helper unused here


def test_reward_client_bounds_message_size_and_request_rate(tmp_path):
    with Federation(tmp_path / "logs") as fed:
        client = fed.start(
            "bounded", "reward-client",
            ["--name", "bounded", "--domains", "add1", "--bank-size", "50", "--max-message-bytes", "4096",
             "--rate-limit", "5/minute"],
        )
        fed.wait_healthy(client, 120)
        stub = reward_stub(client.address)
        big = rpb.ScoreRequest(question_id="q", question="1+1", domain="add1", candidates=["9" * 8000])
        assert code_of(lambda: stub.Score(big, timeout=10)) == grpc.StatusCode.RESOURCE_EXHAUSTED
        codes = []
        for _ in range(8):
            try:
                stub.Describe(rpb.DescribeRequest(), timeout=10)
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as err:
                codes.append(err.code())
        assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes and codes[0] == grpc.StatusCode.OK
        fed.wait_healthy(client, 10)  # health checks are not rate limited
