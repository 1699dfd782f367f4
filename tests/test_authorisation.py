"""Authorisation attacks performed against real processes speaking mutual TLS.

One federation (a development CA from `fedgrpo.certs`, a trainer, an
orchestrator dialing two reward clients): ``client-0`` is honest; the process
dialed as ``client-1`` holds the certificate of ``intruder`` but names itself
``client-1`` in Describe. A second member, ``intruder``, attacks:

- the label oracle: it sends a known question with candidates "0".."255" to a
  reward client's Score and would read the label from the one scoring high;
- a Score request with unbounded fields, to make a judge read unbounded text;
- posing under another name as a dialed client;
- names with a trailing newline, which ``re.match`` with ``$`` accepted;
- calling the trainer with a reward client's certificate, or with one from
  before certificates carried roles (the trainer here admits any identity the
  CA signed, ``--allowed-callers ""``, so only the role can refuse them).
"""

from __future__ import annotations

import datetime

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
        trainer_args=["--allowed-callers", ""],
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
        calls = (lambda: client.Score(oracle, timeout=30), lambda: client.Describe(rpb.DescribeRequest(), timeout=30))
        for call in calls:
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


def test_only_an_orchestrator_certificate_may_call_the_trainer(fed, certs):
    _, _, services = fed
    request = tpb.GetPolicyVersionRequest(run_id="run")
    for name, expected in (("client-0", "has role reward_client; only role orchestrator may"),
                           ("legacy", "carries no role (issued before roles): re-run `make certs`")):
        caller = as_(certs, name) if name != "legacy" else role_less_identity(certs, name)
        with serving.channel(services["trainer"].address, caller) as ch:
            refused = refusal(lambda: tpb_grpc.PolicyTrainerServiceStub(ch).GetPolicyVersion(request, timeout=30))
        assert refused.code() == grpc.StatusCode.PERMISSION_DENIED
        assert expected in refused.details()
    # The orchestrator's certificate passes the role check (and meets the next one: no run started).
    with serving.channel(services["trainer"].address, as_(certs, "orchestrator")) as ch:
        refused = refusal(lambda: tpb_grpc.PolicyTrainerServiceStub(ch).GetPolicyVersion(request, timeout=30))
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION


def role_less_identity(certs, name: str) -> Identity:
    """A certificate as `make certs` wrote them before roles: CA-signed, CN = name, no role."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_cert = x509.load_pem_x509_certificate((certs / "ca.crt").read_bytes())
    ca_key = serialization.load_pem_private_key((certs / "ca.key").read_bytes(), password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name), x509.DNSName("localhost")]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem_key = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return Identity(cert.public_bytes(serialization.Encoding.PEM), pem_key, (certs / "ca.crt").read_bytes())
