"""Property-based: malformed and hostile messages at every RPC of every service.

Hypothesis builds requests of each method's message type with extreme
values in every field (empty and huge strings, NaN and infinities, negative
and enormous numbers, long lists, unknown enum values) and sends them, plus
bytes that are no protobuf message at all, to real services. Whatever comes
in, the answer is OK or a status that tells the caller what was wrong, never
an internal error; the service stays healthy; and nothing a refused request
carried reaches the run state (no run is created or changed by one).
"""

from __future__ import annotations

import math

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedgrpo import serving
from fedgrpo.tasks import DOMAINS
from fedgrpo.v1 import federation_pb2, orchestrator_pb2, policy_trainer_pb2, reward_client_pb2

from .conftest import call, federation

pytestmark = pytest.mark.integration

ALLOWED = {
    grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.ALREADY_EXISTS,
}
EXAMPLES = settings(
    max_examples=30, deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)

WORDS = st.sampled_from(
    ["", "add1", "sub1", "mul1", "client-0", "joined-0", "run", "../../etc/passwd", "\x00", "é" * 3]
)
HUGE = st.builds(lambda c, n: c * n, st.sampled_from(["x", "9", "é", "\u202e", "\x00"]), st.integers(5000, 40_000))
TEXT = st.one_of(WORDS, st.text(max_size=40), HUGE)
FLOATS = st.one_of(st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -1.0, 1e308, 5e-324]), st.floats())
INTS32 = st.one_of(st.sampled_from([0, -1, 1, 2**31 - 1, -(2**31)]), st.integers(-(2**31), 2**31 - 1))
INTS64 = st.one_of(st.sampled_from([0, -1, 2**63 - 1, -(2**63)]), st.integers(-(2**63), 2**63 - 1))


def scalar(field) -> st.SearchStrategy:
    if field.type == F.TYPE_STRING:
        return TEXT
    if field.type == F.TYPE_BYTES:
        return st.binary(max_size=64)
    if field.type in (F.TYPE_DOUBLE, F.TYPE_FLOAT):
        return FLOATS.map(
            lambda x: x if field.type == F.TYPE_DOUBLE or not math.isfinite(x) or abs(x) < 3e38 else math.inf
        )
    if field.type == F.TYPE_BOOL:
        return st.booleans()
    if field.type == F.TYPE_ENUM:
        return st.one_of(st.sampled_from([v.number for v in field.enum_type.values]), st.integers(-5, 99))
    if field.type in (F.TYPE_INT64, F.TYPE_SINT64, F.TYPE_SFIXED64):
        return INTS64
    if field.type in (F.TYPE_UINT32, F.TYPE_FIXED32):
        return st.integers(0, 2**32 - 1)
    if field.type in (F.TYPE_UINT64, F.TYPE_FIXED64):
        return st.integers(0, 2**64 - 1)
    return INTS32


def message(cls, depth: int = 0) -> st.SearchStrategy:
    """Messages of ``cls`` with any subset of fields set to hostile values."""
    fields = []
    for field in cls.DESCRIPTOR.fields:
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            continue  # maps appear only in responses
        if field.type == F.TYPE_MESSAGE:
            if depth > 2 or field.message_type.full_name.startswith("google.protobuf"):
                continue
            sub = message(getattr_message_class(cls, field), depth + 1)
            value = st.lists(sub, max_size=3) if field.is_repeated else sub
        else:
            value = st.lists(scalar(field), max_size=70) if field.is_repeated else scalar(field)
        fields.append((field.name, field, value))

    @st.composite
    def build(draw):
        msg = cls()
        for name, field, value in fields:
            if not draw(st.booleans()):
                continue
            v = draw(value)
            if field.is_repeated:
                if field.type == F.TYPE_MESSAGE:
                    for item in v:
                        getattr(msg, name).add().CopyFrom(item)
                else:
                    getattr(msg, name).extend(v)
            elif field.type == F.TYPE_MESSAGE:
                getattr(msg, name).CopyFrom(v)
            else:
                setattr(msg, name, v)
        return msg

    return build()


def getattr_message_class(cls, field):
    return type(getattr(cls(), field.name)) if not field.is_repeated else type(getattr(cls(), field.name).add())


# (service full name, method, request class, unary response?)
RPCS = {
    "reward_client": [
        ("fedgrpo.v1.RewardClientService", m, reward_client_pb2.__dict__[req])
        for m, req in [("Describe", "DescribeRequest"), ("Score", "ScoreRequest")]
    ],
    "trainer": [
        ("fedgrpo.v1.PolicyTrainerService", m, policy_trainer_pb2.__dict__[req])
        for m, req in [("StartPolicy", "StartPolicyRequest"), ("Train", "TrainBatch"),
                       ("GetPolicyVersion", "GetPolicyVersionRequest"), ("GetLineage", "GetPolicyVersionRequest"),
                       ("DownloadPolicyWeights", "DownloadPolicyWeightsRequest")]
    ],
    "orchestrator": [
        ("fedgrpo.v1.OrchestratorService", m, orchestrator_pb2.__dict__[req])
        for m, req in [("CreateRun", "CreateRunRequest"), ("GetRun", "GetRunRequest"), ("ListRuns", "ListRunsRequest"),
                       ("CancelRun", "CancelRunRequest"), ("WatchRun", "WatchRunRequest"),
                       ("Generate", "GenerateRequest"), ("ListRewardClients", "ListRewardClientsRequest"),
                       ("GetConfidenceGraph", "GetConfidenceGraphRequest"),
                       ("DownloadRunArtifacts", "DownloadRunArtifactsRequest")]
    ],
    "federation": [
        ("fedgrpo.v1.FederationService", m, federation_pb2.__dict__[req])
        for m, req in [("Join", "JoinRequest"), ("Heartbeat", "HeartbeatRequest"),
                       ("FetchTasks", "FetchTasksRequest"), ("SubmitRewards", "SubmitRewardsRequest"),
                       ("Leave", "LeaveRequest"), ("FetchRound", "FetchRoundRequest"),
                       ("DownloadAdapter", "DownloadAdapterRequest"), ("SubmitAdapter", "SubmitAdapterRequest")]
    ],
}


@pytest.fixture(scope="module")
def services(tmp_path_factory, model_cache):
    tmp = tmp_path_factory.mktemp("hostile")
    with federation(
        tmp, model_cache, clients=[("add1", [])],
        orchestrator_args=["--auxiliary-size", "10", "--auxiliary-domains", "add1", "--trainer-retry-seconds", "0"],
    ) as (stub, fed, running):
        addresses = {
            "reward_client": running["client-0"].address,
            "trainer": running["trainer"].address,
            "orchestrator": running["orchestrator"].address,
            "federation": running["orchestrator"].federation_address,
        }
        yield stub, addresses


@pytest.mark.parametrize("target", list(RPCS))
def test_every_rpc_answers_hostile_messages_with_a_clear_status(services, target):
    stub, addresses = services
    before = {r.run_id: r.state for r in stub.ListRuns(orchestrator_pb2.ListRunsRequest()).runs}
    created = []
    with serving.channel(addresses[target]) as channel:
        for service, method, cls in RPCS[target]:
            seen: dict[grpc.StatusCode, int] = {}

            @EXAMPLES
            @given(request=message(cls))
            def check(request):
                if method == "CreateRun":  # keep accepted runs short, cancelled at once below
                    request.spec.steps = 1
                    if request.spec.tasks and request.spec.tasks[0] in DOMAINS:
                        request.spec.questions_per_step = 1
                code = call(channel, service, method, request.SerializeToString())
                assert code in ALLOWED, f"{method}({request!r:.300}) -> {code}"
                seen[code] = seen.get(code, 0) + 1
                if method == "CreateRun" and code == grpc.StatusCode.OK:
                    created.append(request)

            check()
            readers = ("Describe", "ListRuns", "ListRewardClients", "GetConfidenceGraph")
            assert set(seen) - {grpc.StatusCode.OK} or method in readers, \
                f"{method}: no hostile request was refused ({seen})"

            @EXAMPLES
            @given(junk=st.binary(min_size=1, max_size=256))
            def undecodable(junk):
                code = call(channel, service, method, junk)
                assert code in ALLOWED, f"{method}(bytes {junk!r:.80}) -> {code}"

            undecodable()
        serving.wait_healthy(addresses[target] if target != "federation" else addresses["orchestrator"], 10)
    after = {r.run_id: r.state for r in stub.ListRuns(orchestrator_pb2.ListRunsRequest()).runs}
    # Refused requests changed no run: runs existing before are untouched unless a CancelRun was accepted.
    assert set(before) <= set(after)
    assert len(after) - len(before) == len(created)
    for run_id in set(after) - set(before):
        stub.CancelRun(orchestrator_pb2.CancelRunRequest(run_id=run_id))


def test_undecodable_bytes_are_invalid_argument(services):
    _, addresses = services
    with serving.channel(addresses["reward_client"]) as channel:
        # Field 1 (question_id) declared as a string, but followed by a truncated length.
        code = call(channel, "fedgrpo.v1.RewardClientService", "Score", b"\x0a\xff\xff")
        assert code == grpc.StatusCode.INVALID_ARGUMENT
