"""Failed experts: retry, replacement and quorum, without processes.

The pure rules (``recovery``) are tested directly; the run loop's shell
(``RunExecutor._recover_missing``) is driven with real ``RewardClients`` whose
transports answer from a script: the fault is injected on purpose.
"""

import math

import grpc
import pytest

from fedgrpo.services.orchestrator import recovery
from fedgrpo.services.orchestrator.clients import RewardClient, RewardClients, ScoreOutcome
from fedgrpo.services.orchestrator.experts import select_experts
from fedgrpo.services.orchestrator.joined import ScoreError
from fedgrpo.services.orchestrator.online_confidence import RunConfidence
from fedgrpo.services.orchestrator.recovery import Action, decide, plan_round
from fedgrpo.services.orchestrator.rollout.engine import Sampled
from fedgrpo.services.orchestrator.run_loop import RunExecutor
from fedgrpo.services.orchestrator.spec import RunConfig
from fedgrpo.tasks import Question
from fedgrpo.v1 import reward_client_pb2 as rpb

UNAVAILABLE, NOT_FOUND = grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.NOT_FOUND
NAN = math.nan


# -- the rules ------------------------------------------------------------------


@pytest.mark.parametrize(
    "code, live, retried, action",
    [
        (None, True, False, Action.KEEP),  # answered (garbage included: asking again gets the same)
        (NOT_FOUND, True, False, Action.REPLACE),  # cannot judge: next expert at once, no retry
        (UNAVAILABLE, True, False, Action.RETRY),  # transient: once more
        (grpc.StatusCode.DEADLINE_EXCEEDED, True, True, Action.REPLACE),  # ...then replaced
        (grpc.StatusCode.RESOURCE_EXHAUSTED, False, False, Action.REPLACE),  # it left
        (grpc.StatusCode.INTERNAL, True, False, Action.KEEP),  # its own error, for good
        (grpc.StatusCode.INTERNAL, False, False, Action.REPLACE),
    ],
)
def test_each_failure_gets_its_action(code, live, retried, action):
    assert decide(code, live, retried) is action


def test_a_replacement_is_never_a_current_expert_an_outsider_or_one_that_failed():
    # Question 0: a and b judge it, b cannot. The ranking prefers a (current), then x (not the
    # run's), then c (failed on it before), then d: only d may replace b.
    asks, unfilled = plan_round(
        experts=[["a", "b"]], codes=[[None, NOT_FOUND]], weights=[[0.9, 0.8]],
        live={"a", "b", "c", "d", "x"}, retried=set(), failed=[{"c"}],
        ranked={0: [("a", 0.9), ("x", 0.85), ("c", 0.8), ("d", 0.5)]}, allowed={"a", "b", "c", "d"},
    )
    assert asks == [recovery.Ask(0, 1, "d", 0.5)] and unfilled == []


def test_two_failed_experts_of_one_question_get_two_different_replacements():
    asks, _ = plan_round(
        experts=[["b", "c"]], codes=[[NOT_FOUND, NOT_FOUND]], weights=[[1.0, 1.0]],
        live={"a", "b", "c", "d"}, retried=set(), failed=[set()],
        ranked={0: [("a", 1.0), ("d", 1.0), ("b", 1.0), ("c", 1.0)]}, allowed={"a", "b", "c", "d"},
    )
    assert [(a.slot, a.target) for a in asks] == [(0, "a"), (1, "d")]


def test_with_nobody_left_the_slot_stays_missing():
    asks, unfilled = plan_round(
        experts=[["a", "b"]], codes=[[UNAVAILABLE, None]], weights=[[1.0, 1.0]],
        live={"b"}, retried=set(), failed=[set()], ranked={0: [("b", 1.0)]}, allowed={"a", "b"},
    )
    assert asks == [] and unfilled == [(0, 0)]


def test_a_live_expert_is_retried_once_then_replaced():
    common = dict(experts=[["a"]], codes=[[UNAVAILABLE]], weights=[[1.0]], live={"a", "b"}, failed=[set()],
                  ranked={0: [("a", 1.0), ("b", 1.0)]}, allowed={"a", "b"})
    assert plan_round(retried=set(), **common)[0] == [recovery.Ask(0, 0, "a", 1.0)]
    assert plan_round(retried={(0, "a")}, **common)[0] == [recovery.Ask(0, 0, "b", 1.0)]


def test_quorum_counts_answering_experts():
    outcome = ScoreOutcome(experts=["a", "b"], rows=[[1.0, 0.0], [NAN, NAN]], codes=[None, UNAVAILABLE],
                           received=2, dropped=2)
    assert recovery.apply_quorum([outcome], 2) == 1
    assert outcome.received == 0 and outcome.dropped == 4 and all(math.isnan(r) for row in outcome.rows for r in row)
    kept = ScoreOutcome(experts=["a", "b"], rows=[[1.0, NAN], [NAN, NAN]], received=1, dropped=3)
    assert recovery.apply_quorum([kept], 1) == 0 and kept.rows[0][0] == 1.0


def test_quorum_holds_when_fewer_experts_were_chosen_than_it_asks():
    """expert_quorum 2, but only one live client was there to choose: one answer is below quorum.
    (The original rule lowered the quorum to the number of experts chosen.)"""
    outcome = ScoreOutcome(experts=["a"], rows=[[1.0, 0.0]], codes=[None], received=2)
    executor = RunExecutor.__new__(RunExecutor)
    assert executor._apply_quorum(config(expert_quorum=2, experts_per_question=2), [outcome]) == 1
    assert outcome.received == 0


# -- the run loop's shell, with injected faults -----------------------------------


class Scripted:
    """A transport that answers each call from a script: rewards (the first one per candidate), or a gRPC
    status (the injected fault)."""

    def __init__(self, answer):
        self.answer, self.calls = answer, 0

    def score(self, request, timeout):
        self.calls += 1
        if isinstance(self.answer, grpc.StatusCode):
            raise ScoreError(self.answer, "injected")
        return rpb.ScoreResponse(rewards=self.answer[: len(request.candidates)])


def config(**fields):
    return RunConfig(**{"tasks": ["add1"], "candidates_per_question": 2, "expert_selection": "domain", **fields})


def shell(answers):
    clients = RewardClients([])
    for name, answer in answers.items():
        clients.clients.append(RewardClient(name, Scripted(answer), name=name, domains=("add1",), healthy=True))
    executor = RunExecutor.__new__(RunExecutor)  # the recovery shell only: no store, engine or trainer
    executor.clients, executor.router, executor.select = clients, None, select_experts
    executor.confidence = RunConfidence()
    return executor, clients


def recover(executor, cfg, experts):
    """Score one question with ``experts`` as the first pass would, then recover; returns the outcome."""
    question = Question("q1", "add1", "Calculate 1 + 1.")
    groups = [[Sampled([1], [0.0], "2"), Sampled([2], [0.0], "3")]]
    outcome = executor.clients.score_questions("r", [question], [[["2", "3"]] * len(experts)], [experts], 5.0)[0]
    weights = [[1.0] * len(experts)]
    replaced, retried = executor._recover_missing("r", cfg, 1, [question], groups, [outcome], weights)
    return outcome, replaced, retried


def test_two_experts_that_cannot_judge_are_not_replaced_by_the_same_client():
    """The double count: b and c both failed, both were replaced by a, whose rewards then counted twice."""
    executor, clients = shell({"a": [1.0, 0.0], "b": NOT_FOUND, "c": NOT_FOUND, "d": [1.0, 0.0]})
    try:
        outcome, replaced, _ = recover(executor, config(), ["b", "c"])
    finally:
        clients.close()
    assert sorted(outcome.experts) == ["a", "d"] and replaced == 2
    assert outcome.received == 4 and outcome.dropped == 0


def test_a_replacement_never_goes_back_to_an_expert_that_failed_on_the_question():
    """b cannot judge; its replacement c cannot either; b must not be asked again (d is next)."""
    executor, clients = shell({"a": [1.0, 0.0], "b": NOT_FOUND, "c": NOT_FOUND, "d": [1.0, 0.0]})
    try:
        outcome, _, _ = recover(executor, config(), ["a", "b"])
    finally:
        clients.close()
    assert outcome.experts == ["a", "d"]
    assert clients.by_name()["b"].transport.calls == 1


def test_replacements_stay_inside_the_run_clients():
    executor, clients = shell({"a": [1.0, 0.0], "b": NOT_FOUND, "c": [1.0, 0.0]})
    try:
        outcome, replaced, _ = recover(executor, config(reward_clients=["a", "b"]), ["a", "b"])
    finally:
        clients.close()
    assert outcome.experts == ["a", "b"] and replaced == 0 and clients.by_name()["c"].transport.calls == 0


def test_a_client_sending_nan_for_every_candidate_goes_straight_to_the_next_expert():
    executor, clients = shell({"a": [1.0, 0.0], "b": [NAN, NAN], "c": [0.0, 1.0]})
    try:
        outcome, replaced, retried = recover(executor, config(), ["a", "b"])
    finally:
        clients.close()
    assert outcome.experts == ["a", "c"] and (replaced, retried) == (1, 0)
    assert clients.by_name()["b"].transport.calls == 1 and outcome.rows[1] == [0.0, 1.0]


# -- the run seen failing: confidence-graph routing ---------------------------------


class RefusesTraining:
    """Judges the auxiliary items (probes: it is told their ids, as a client that knows the bank's tail
    could work out) honestly, and answers NOT_FOUND (cannot judge) to every other call."""

    def __init__(self, items):
        from fedgrpo.services.reward_client.evaluators import AnswerBasedEvaluator

        self.calls, self.items = 0, {i.question_id for i in items}
        self.judge = AnswerBasedEvaluator.from_bank(["add1"], 7, 3)

    def score(self, request, timeout):
        self.calls += 1
        if request.question_id not in self.items:
            raise ScoreError(NOT_FOUND, "injected: cannot judge")
        return rpb.ScoreResponse(rewards=self.judge.score(request.domain, request.question, list(request.candidates)))


def test_graph_routed_replacement_is_never_a_current_expert_nor_outside_the_run():
    """The reported run: reward_clients [org-a, org-b]; org-b failed and was "replaced by org-a",
    which already judged the question: its rewards counted twice. (The router read the empty set of
    remaining clients as "anyone".) Here org-c, outside the run, must not be asked either."""
    from fedgrpo.services.orchestrator.embedding import MiniLMEmbedder
    from fedgrpo.services.orchestrator.routing import ExpertRouter
    from fedgrpo.tasks import build_questions

    executor, clients = shell({"org-a": [1.0, 0.0, 0.0, 1.0], "org-c": [1.0, 0.0, 0.0, 1.0]})
    items = build_questions("add1", 7, 3)
    refusing = RewardClient("org-b", RefusesTraining(items), name="org-b", domains=("add1",), healthy=True)
    clients.clients.insert(1, refusing)
    try:
        executor.router = ExpertRouter(clients, MiniLMEmbedder("cpu"), items, neighbours=3)
        cfg = config(expert_selection="confidence_graph", reward_clients=["org-a", "org-b"])
        outcome, replaced, _ = recover(executor, cfg, ["org-a", "org-b"])
    finally:
        clients.close()
    assert outcome.experts == ["org-a", "org-b"] and replaced == 0
    assert outcome.received == 2 and outcome.dropped == 2  # org-a's row once; org-b's stays missing


class SlowButAlive(Scripted):
    """Misses every scoring deadline (injected) yet answers Describe: what a slow client looks like."""

    def __init__(self):
        super().__init__(grpc.StatusCode.DEADLINE_EXCEEDED)

    def describe(self, timeout):
        return rpb.DescribeResponse(name="slow", domains=["add1"], reward_min=0.0, reward_max=1.0)


def test_a_client_that_misses_deadlines_stays_out_of_selection_though_it_answers_describe():
    clients = RewardClients([], bench_seconds=60.0)
    slow = RewardClient("slow", SlowButAlive(), name="slow", domains=("add1",), healthy=True)
    clients.clients.append(slow)
    question = Question("q1", "add1", "Calculate 1 + 1.")
    for _ in range(3):
        clients.score_one(slow, "r", question, ["2"], 0.1)
    assert not slow.healthy and slow.benched()
    # The health check describes it again: it answers, but stays out while benched.
    assert not clients.describe(slow)
    assert not slow.healthy and not slow.view().healthy
    first_bench = slow.last_bench
    # Once the bench is over it comes back; three more misses bench it twice as long.
    slow.benched_until = 0.0
    assert clients.describe(slow) and slow.healthy
    for _ in range(3):
        clients.score_one(slow, "r", question, ["2"], 0.1)
    assert not slow.healthy and slow.last_bench == 2 * first_bench
    # An answered Score ends the doubling.
    slow.benched_until, slow.transport.answer = 0.0, [1.0]
    assert clients.describe(slow)
    clients.score_one(slow, "r", question, ["2"], 0.1)
    assert slow.last_bench == 0.0 and slow.failures == 0


def test_probes_do_not_bench_a_client():
    clients = RewardClients([], bench_seconds=60.0)
    slow = RewardClient("slow", SlowButAlive(), name="slow", domains=("add1",), healthy=True)
    question = Question("q1", "add1", "Calculate 1 + 1.")
    for _ in range(5):
        clients.score_one(slow, "probe", question, ["2"], 0.1, count_failures=False)
    assert slow.healthy and not slow.benched()
