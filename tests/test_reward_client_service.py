"""The reward client as a real process: Describe, Score, and what it refuses."""

import math

import grpc
import pytest

from fedgrpo.job.launcher import Federation
from fedgrpo.tasks import build_questions
from fedgrpo.v1 import common_pb2
from fedgrpo.v1 import reward_client_pb2 as pb

from .conftest import START_TIMEOUT, reward_stub

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    with Federation(tmp_path_factory.mktemp("rc")) as fed:
        service = fed.start(
            "client", "reward-client", ["--name", "alpha", "--domains", "add1,mul1", "--bank-size", "100"]
        )
        fed.wait_healthy(service, START_TIMEOUT)
        yield reward_stub(service.address)


def test_describe_names_domains_and_evaluators(client):
    d = client.Describe(pb.DescribeRequest())
    assert d.name == "alpha"
    assert list(d.domains) == ["add1", "mul1"]
    assert list(d.evaluator_kinds) == [common_pb2.EVALUATOR_KIND_ANSWER_BASED]
    assert (d.reward_min, d.reward_max) == (0.0, 1.0)


def test_score_checks_answers_against_private_ground_truth(client):
    q = build_questions("add1", 0, 100)[5]
    answer = q.entry["answer"]
    wrong = str(int(answer) + 1)
    reply = client.Score(
        pb.ScoreRequest(
            question_id=q.question_id, question=q.text, domain="add1",
            candidates=[answer, f"The sum is {answer}, I think.", wrong, "no idea"],
        )
    )
    assert [round(r, 6) for r in reply.rewards] == [1.0, 0.9, 0.1, 0.0]


def test_unknown_question_is_not_found(client):
    with pytest.raises(grpc.RpcError) as err:
        client.Score(pb.ScoreRequest(question_id="x", question="What is 1 + 1?", domain="add1", candidates=["2"]))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    "request_fields, field",
    [
        ({"question_id": "", "question": "q", "domain": "add1", "candidates": ["1"]}, "question_id"),
        ({"question_id": "x", "question": "", "domain": "add1", "candidates": ["1"]}, "question"),
        ({"question_id": "x", "question": "q", "domain": "", "candidates": ["1"]}, "domain"),
        ({"question_id": "x", "question": "q", "domain": "add1", "candidates": []}, "candidates"),
        ({"question_id": "x", "question": "q", "domain": "add1", "candidates": ["1"] * 257}, "candidates"),
        ({"question_id": "x", "question": "q", "domain": "add1", "candidates": ["9" * 20000]}, "candidates[0]"),
    ],
)
def test_bad_score_requests_are_invalid_argument_naming_the_field(client, request_fields, field):
    with pytest.raises(grpc.RpcError) as err:
        client.Score(pb.ScoreRequest(**request_fields))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(field + ":")


def test_nan_reward_is_a_float_the_orchestrator_must_drop():
    # The wire format can carry NaN: the orchestrator, not the client, is the guard.
    assert math.isnan(pb.ScoreResponse(rewards=[math.nan]).rewards[0])
