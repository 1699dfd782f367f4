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
from fedgrpo.security import Identity, bearer_token
from fedgrpo.v1 import federation_pb2 as fpb
from fedgrpo.v1 import federation_pb2_grpc as fpb_grpc
from fedgrpo.v1 import orchestrator_pb2 as pb
from fedgrpo.v1 import orchestrator_pb2_grpc as pb_grpc
from fedgrpo.v1 import policy_trainer_pb2 as tpb
from fedgrpo.v1 import reward_client_pb2 as rpb

from .conftest import call, federation, reward_stub

pytestmark = pytest.mark.integration


def identity(certs, name: str) -> Identity:
    return Identity.in_dir(certs, name)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    certs = tmp_path_factory.mktemp("certs")
    init_federation(certs, clients=["joined-0", "intruder", "victim", "outsider"])
    foreign = tmp_path_factory.mktemp("foreign")
    init_federation(foreign, clients=["joined-0"])
    return certs, foreign


@pytest.fixture(scope="module")
def secured(tmp_path_factory, model_cache, pki):
    certs, _ = pki
    tmp = tmp_path_factory.mktemp("secured")
    with federation(
        tmp, model_cache, clients=[], joined=[("add1", [])], certs=certs,
        # Every public method is tried without a token, twice: above the default 10 failures a minute.
        orchestrator_args=["--auxiliary-size", "10", "--auxiliary-domains", "add1",
                           "--auth-failure-limit", "100/minute",
                           # The members: "outsider" holds a certificate of this CA, but is not one of them.
                           "--reward-client-identities", "joined-0,intruder,victim"],
    ) as (stub, fed, services):
        yield stub, fed, services


def code_of(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code()


def refusals(channel: grpc.Channel, service) -> dict[str, grpc.StatusCode]:  # type: ignore[no-untyped-def]
    """Method name -> status of calling each RPC of a service descriptor with an empty request."""
    return {m.name: call(channel, service.full_name, m.name, b"") for m in service.methods}


def test_every_public_api_method_needs_a_valid_token(secured, pki):
    stub, fed, services = secured
    certs, _ = pki
    address = services["orchestrator"].address
    assert stub.ListRuns(pb.ListRunsRequest()) is not None  # with the token
    service = pb.DESCRIPTOR.services_by_name["OrchestratorService"]
    assert {"WatchRun", "Generate", "CreateRun", "CancelRun"} <= {m.name for m in service.methods}
    for token in (None, "x" * 43):
        with serving.channel(address, identity(certs, "orchestrator"), token=token) as ch:
            refused = refusals(ch, service)
        # Refused before the request is read: an empty request would otherwise be INVALID_ARGUMENT or NOT_FOUND.
        assert set(refused.values()) == {grpc.StatusCode.UNAUTHENTICATED}, refused
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
        code = code_of(lambda: join(fpb.JoinRequest(description=description), timeout=10))
        assert code == grpc.StatusCode.UNAVAILABLE
    stranger = Identity.load(foreign / "joined-0.crt", foreign / "joined-0.key", certs / "ca.crt")
    with serving.channel(address, stranger) as ch:
        join = fpb_grpc.FederationServiceStub(ch).Join
        code = code_of(lambda: join(fpb.JoinRequest(description=description), timeout=10))
        assert code == grpc.StatusCode.UNAVAILABLE


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


def test_a_certificate_of_the_federation_ca_is_not_membership(secured, pki):
    """--reward-client-identities lists the members: another holder of a CA certificate is refused everywhere."""
    stub, _, services = secured
    certs, _ = pki
    service = fpb.DESCRIPTOR.services_by_name["FederationService"]
    with serving.channel(services["orchestrator"].federation_address, identity(certs, "outsider")) as ch:
        refused = refusals(ch, service)
    assert set(refused.values()) == {grpc.StatusCode.PERMISSION_DENIED}, refused
    assert "outsider" not in {c.name for c in stub.ListRewardClients(pb.ListRewardClientsRequest()).clients}


def test_only_the_orchestrator_identity_may_call_the_trainer(secured, pki):
    certs, _ = pki
    _, _, services = secured
    service = tpb.DESCRIPTOR.services_by_name["PolicyTrainerService"]
    for name in ("intruder", "joined-0"):  # a stranger member, and a reward client doing real work here
        with serving.channel(services["trainer"].address, identity(certs, name)) as ch:
            refused = refusals(ch, service)
        assert set(refused.values()) == {grpc.StatusCode.PERMISSION_DENIED}, (name, refused)
    with serving.channel(services["trainer"].address, identity(certs, "orchestrator")) as ch:
        # The rightful caller gets past authorisation: a run with no policy started is FAILED_PRECONDITION.
        request = tpb.GetPolicyVersionRequest(run_id="no-such-run").SerializeToString()
        assert call(ch, service.full_name, "GetPolicyVersion", request) == grpc.StatusCode.FAILED_PRECONDITION


def test_an_intruder_holding_a_victims_real_session_and_task_ids_can_neither_use_nor_spoil_them(secured, pki):
    """The worst case of a leak: the intruder knows the ids the victim really holds."""
    stub, _, services = secured
    certs, _ = pki
    address = services["orchestrator"].federation_address
    with serving.channel(address, identity(certs, "victim")) as victim_ch, \
            serving.channel(address, identity(certs, "intruder")) as intruder_ch:
        victim, intruder = fpb_grpc.FederationServiceStub(victim_ch), fpb_grpc.FederationServiceStub(intruder_ch)
        described = rpb.DescribeResponse(name="victim", domains=["add1"], evaluator_kinds=[1], reward_max=1)
        session = victim.Join(fpb.JoinRequest(description=described), timeout=10).session_id
        # Joining is followed by probes: real tasks with real ids, sent to the victim alone.
        tasks = []
        for _ in range(6):
            tasks += victim.FetchTasks(fpb.FetchTasksRequest(session_id=session, wait_seconds=10), timeout=20).tasks
            if tasks:
                break
        assert tasks, "no probe reached the victim after it joined"
        task = tasks[0]
        own = rpb.DescribeResponse(name="intruder", domains=["add1"], evaluator_kinds=[1], reward_max=1)
        intruder_session = intruder.Join(fpb.JoinRequest(description=own), timeout=10).session_id
        stolen = [1.0] * len(task.request.candidates)
        attempts = {
            "heartbeat as the victim": lambda: intruder.Heartbeat(fpb.HeartbeatRequest(session_id=session), timeout=10),
            "fetch the victim's tasks": lambda: intruder.FetchTasks(
                fpb.FetchTasksRequest(session_id=session, wait_seconds=0), timeout=10),
            "answer in the victim's session": lambda: intruder.SubmitRewards(fpb.SubmitRewardsRequest(
                session_id=session, task_id=task.task_id, rewards=stolen), timeout=10),
            "answer the victim's task in its own session": lambda: intruder.SubmitRewards(fpb.SubmitRewardsRequest(
                session_id=intruder_session, task_id=task.task_id, rewards=stolen), timeout=10),
            "end the victim's session": lambda: intruder.Leave(fpb.LeaveRequest(session_id=session), timeout=10),
        }
        codes = {what: code_of(attempt) for what, attempt in attempts.items()}
        assert codes == {
            "heartbeat as the victim": grpc.StatusCode.NOT_FOUND,
            "fetch the victim's tasks": grpc.StatusCode.NOT_FOUND,
            "answer in the victim's session": grpc.StatusCode.NOT_FOUND,
            "answer the victim's task in its own session": grpc.StatusCode.PERMISSION_DENIED,
            "end the victim's session": grpc.StatusCode.NOT_FOUND,
        }
        # Nothing was spoiled: the victim's session lives and its task is still open for its own answer.
        victim.Heartbeat(fpb.HeartbeatRequest(session_id=session), timeout=10)
        answer = fpb.SubmitRewardsRequest(
            session_id=session, task_id=task.task_id, rewards=[0.0] * len(task.request.candidates))
        victim.SubmitRewards(answer, timeout=10)
        # A task is answered once: the same answer again (a retry, a replay) is refused and changes nothing.
        assert code_of(lambda: victim.SubmitRewards(answer, timeout=10)) == grpc.StatusCode.FAILED_PRECONDITION
        intruder.Leave(fpb.LeaveRequest(session_id=intruder_session), timeout=10)
        victim.Leave(fpb.LeaveRequest(session_id=session), timeout=10)


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
        # Exactly the limit: nothing else called Describe or Score (health checks are exempt), and the
        # oversized Score above was refused before it counted.
        assert codes == [grpc.StatusCode.OK] * 5 + [grpc.StatusCode.RESOURCE_EXHAUSTED] * 3
        fed.wait_healthy(client, 10)  # health checks are not rate limited


def test_the_bearer_scheme_is_case_insensitive_and_the_token_is_not():
    assert bearer_token([("authorization", "Bearer abc")]) == "abc"
    assert bearer_token([("authorization", "bearer abc")]) == bearer_token([("authorization", "BEARER  abc ")]) == "abc"
    assert bearer_token([("authorization", "Bearer ABC")]) == "ABC"
    for value in ("Basic abc", "Bearer", "Bearer  ", "abc"):
        assert bearer_token([("authorization", value)]) is None
    assert bearer_token([("x-other", "Bearer abc")]) is None and bearer_token(None) is None
