"""A reward client with an organisation's own label file and its own Python checker, as a real process:
what it declares, how it matches the server's questions, and a checker that fails on one candidate.
And: a built-in domain written to a file and scored by the reasoning-gym checker rewards exactly as the
built-in bank always has, so the built-in domains can take the user's path."""

from __future__ import annotations

import json
import math
import os
import textwrap

import grpc
import pytest

from fedgrpo.data.checkers import load_checker
from fedgrpo.data.files import read_rows
from fedgrpo.data.make import make_rows, write_rows
from fedgrpo.job.launcher import Federation
from fedgrpo.services.reward_client.evaluators import AnswerBasedEvaluator
from fedgrpo.v1 import common_pb2
from fedgrpo.v1 import reward_client_pb2 as pb

from .conftest import START_TIMEOUT, reward_stub

LABELS = [
    {"question": "Which ICD-10 code is asthma?", "answer": "J45", "domain": "icd"},
    {"question": "Which ICD-10 code is  GERD?", "answer": "K21", "domain": "icd"},
    {"question": "Which ICD-10 code is asthma?", "answer": "R06", "domain": "triage"},  # same text, other domain
    {"question": "Which ICD-10 code is asthma?", "answer": "X99", "domain": "icd"},  # repeated: first label kept
]

CHECKER = '''
def code_matches(candidate, label, *, domain):
    """An organisation's own check: the code, case-insensitive, anywhere in the answer."""
    if "CRASH" in candidate:
        raise RuntimeError("coding service unavailable")
    return label.lower() in candidate.lower()
'''


@pytest.fixture(scope="module")
def organisation(tmp_path_factory):
    """org-a's machine: a label file and a checker module of its own, and its client process."""
    home = tmp_path_factory.mktemp("org-a")
    labels = home / "labels.jsonl"
    labels.write_text("".join(json.dumps(row) + "\n" for row in LABELS))
    (home / "org_checks.py").write_text(textwrap.dedent(CHECKER))
    path = os.pathsep.join(p for p in (str(home), os.environ.get("PYTHONPATH", "")) if p)
    with Federation(home / "logs") as fed:
        service = fed.start(
            "org-a", "reward-client",
            ["--name", "org-a", "--labels", str(labels), "--checker", "org_checks:code_matches"],
            env={"PYTHONPATH": path},
        )
        fed.wait_healthy(service, START_TIMEOUT)
        yield reward_stub(service.address), service


def score(stub, question: str, domain: str, candidates: list[str], question_id: str = "q-1") -> list[float]:
    return list(stub.Score(pb.ScoreRequest(
        question_id=question_id, question=question, domain=domain, candidates=candidates,
    )).rewards)


@pytest.mark.integration
def test_describe_declares_the_files_domains_and_answer_based_evaluation(organisation):
    stub, _ = organisation
    described = stub.Describe(pb.DescribeRequest())
    assert described.name == "org-a"
    assert list(described.domains) == ["icd", "triage"]
    assert list(described.evaluator_kinds) == [common_pb2.EVALUATOR_KIND_ANSWER_BASED]
    assert (described.reward_min, described.reward_max) == (0.0, 1.0)


@pytest.mark.integration
def test_questions_match_by_normalised_text_and_the_asked_domain_wins(organisation):
    stub, _ = organisation
    # The file says "is  GERD?" (two spaces); the server asks with one, and a trailing newline.
    assert score(stub, "Which ICD-10 code is GERD?\n", "icd", ["K21", "it is k21", "J45"]) == [1.0, 1.0, 0.0]
    assert score(stub, "Which ICD-10 code is asthma?", "icd", ["J45", "R06", "X99"]) == [1.0, 0.0, 0.0]
    assert score(stub, "Which ICD-10 code is asthma?", "triage", ["J45", "R06"]) == [0.0, 1.0]


@pytest.mark.integration
def test_a_question_it_holds_no_label_for_is_not_found(organisation):
    stub, _ = organisation
    with pytest.raises(grpc.RpcError) as err:
        score(stub, "Which ICD-10 code is migraine?", "icd", ["G43"])
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.integration
def test_a_checker_that_raises_makes_that_candidate_nan_and_the_client_goes_on(organisation):
    stub, service = organisation
    rewards = score(stub, "Which ICD-10 code is asthma?", "icd", ["J45", "CRASH", "K21"], question_id="q-crash")
    assert rewards[0] == 1.0 and math.isnan(rewards[1]) and rewards[2] == 0.0
    assert score(stub, "Which ICD-10 code is asthma?", "icd", ["j45"]) == [1.0]
    log = service.log_path.read_text()
    assert "checker org_checks:code_matches cannot judge a candidate of question q-crash" in log
    assert "coding service unavailable" in log
    assert "1 repeated rows skipped" in log


@pytest.mark.parametrize("domain", ["add1", "chain3", "letter_counting"])
def test_a_built_in_domain_from_a_file_rewards_exactly_as_the_bank(tmp_path, domain):
    bank = AnswerBasedEvaluator.from_bank([domain], 0, 60)
    rows = read_rows(write_rows(make_rows(domain, 60), tmp_path / f"{domain}.csv"), labelled=True)
    from_file = AnswerBasedEvaluator(rows, load_checker("reasoning-gym"))
    scored = 0
    for row in rows:
        answer = row.answer
        candidates = [answer, f"The answer is {answer}.", f"{answer}1", "-1", "I do not know", f"{answer}.0"]
        expected = bank.score(domain, row.question, candidates)
        assert from_file.score(domain, row.question, candidates) == expected, row.question
        assert expected[0] == 1.0  # the right answer, concise
        scored += 1
    assert scored == 60


@pytest.mark.integration
def test_a_run_trains_on_rewards_from_label_files(tmp_path, model_cache):
    """Two organisations whose labels are files (one dialed, one joined), no built-in bank on their side:
    a real run on add1 is scored by both at every step."""
    from fedgrpo.v1 import orchestrator_pb2 as opb
    from tests.conftest import federation
    from tests.test_join import run_to_end, steps_of

    labels = write_rows(make_rows("add1", 200), tmp_path / "add1.parquet")  # the server's bank: seed 0, 200
    own = ["--labels", str(labels), "--checker", "reasoning-gym"]
    with federation(
        tmp_path, model_cache, clients=[("", own)], joined=[("", own)],
        orchestrator_args=["--auxiliary-size", "10", "--auxiliary-domains", "add1"],
    ) as (stub, _, services):
        listed = {c.name: list(c.domains) for c in stub.ListRewardClients(opb.ListRewardClientsRequest()).clients}
        assert listed == {"client-0": ["add1"], "joined-0": ["add1"]}
        run = stub.CreateRun(opb.CreateRunRequest(spec=opb.RunSpec(
            tasks=["add1"], steps=2, questions_per_step=2, candidates_per_question=4, experts_per_question=2,
            max_tokens=8, expert_selection=opb.EXPERT_SELECTION_DOMAIN,
        )))
        run = run_to_end(stub, run.run_id)
        assert run.state == opb.RUN_STATE_SUCCEEDED, run.error
        assert [s["rewards_by_client"] for s in steps_of(run)] == [{"client-0": 8, "joined-0": 8}] * 2
        distinct = len({row["question"] for row in make_rows("add1", 200)})
        assert f"holds {distinct} labelled questions from {labels}" in services["client-0"].log_path.read_text()
