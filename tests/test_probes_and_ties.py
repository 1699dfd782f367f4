"""A failed probe is unknown, not incompetence; ties go to exact judges.

Pure tests on the graph and the selection math, then the router with real
``RewardClients``, a real MiniLM embedder and a real ``RunStore``; the
clients' transports answer from a script so a probe can fail on purpose.
"""

import json

import grpc
import numpy as np
import pytest

from fedgrpo.services.orchestrator.clients import RewardClient, RewardClients
from fedgrpo.services.orchestrator.competence import competence, select_top_m
from fedgrpo.services.orchestrator.confidence_graph import ConfidenceGraph
from fedgrpo.services.orchestrator.embedding import MiniLMEmbedder
from fedgrpo.services.orchestrator.experts import ANSWER_BASED, MODEL_BASED, ClientView, exactness, select_experts
from fedgrpo.services.orchestrator.joined import ScoreError
from fedgrpo.services.orchestrator.routing import PROBE_TRIES, ExpertRouter
from fedgrpo.services.orchestrator.runs import RunStore
from fedgrpo.services.reward_client.evaluators import AnswerBasedEvaluator
from fedgrpo.tasks import build_questions
from fedgrpo.v1 import reward_client_pb2 as rpb

TRUTH = [True, False, False, True]
PERFECT = [1.0, 0.0, 0.0, 1.0]


def small_graph() -> ConfidenceGraph:
    graph = ConfidenceGraph()
    graph.add_items(["x1", "x2", "x3"], ["x", "x", "x"], np.eye(3))
    return graph


# -- unknown on the graph ---------------------------------------------------------


def test_unknown_items_do_not_lower_competence():
    graph = small_graph()
    for item in ("x1", "x2"):
        graph.record_probe("alice", item, PERFECT, TRUTH, 0.0, 1.0, 0.5)
    assert graph.record_unknown("alice", "x3", "alice: DEADLINE_EXCEEDED") == 1
    query = np.ones(3)
    assert graph.competences(query, L=3) == {"alice": 1.0}  # not 2/3: x3 says nothing
    assert graph.client_domain_weights() == {"alice": {"x": 1.0}}
    assert graph.unknown_items("alice") == ["x3"]
    # garbage is judged: it does count, as 0
    graph.record_probe("bob", "x1", PERFECT, TRUTH, 0.0, 1.0, 0.5)
    assert graph.record_probe("bob", "x2", [7.0, 0.0, 0.0, 1.0], TRUTH, 0.0, 1.0, 0.5) is not None
    assert graph.competences(query, L=2)["bob"] == 0.5
    assert competence({"x1": 1.0}, ["x1", "x3"], [1.0, 3.0], unknown={"x3"}) == 1.0
    assert competence({}, ["x3"], unknown={"x3"}) == 0.0  # nothing known: not competent


def test_tries_count_up_and_a_judged_probe_clears_unknown():
    graph = small_graph()
    assert [graph.record_unknown("alice", "x1", "UNAVAILABLE") for _ in range(3)] == [1, 2, 3]
    assert graph.unknown_items("alice", max_tries=3) == [] and graph.unknown_items("alice") == ["x1"]
    graph.record_probe("alice", "x1", PERFECT, TRUTH, 0.0, 1.0, 0.5)
    assert graph.unknown_items("alice") == []
    assert graph.graph.edges[("client", "alice"), ("item", "x1")] == {"accuracy": 1.0, "problem": "", "error": 0.0}
    graph.record_unknown("alice", "x1", "UNAVAILABLE")  # never overwrites what a probe judged
    assert graph.competences(np.array([1.0, 0, 0]), L=1) == {"alice": 1.0}


def test_the_saved_graph_keeps_unknown_apart_from_zero():
    graph = small_graph()
    graph.record_probe("alice", "x1", [0.0, 1.0, 1.0, 0.0], TRUTH, 0.0, 1.0, 0.5)  # judged: all wrong
    graph.record_unknown("alice", "x2", "UNAVAILABLE")
    restored = ConfidenceGraph.from_json(json.loads(json.dumps(graph.to_json())))
    assert restored.unknown_items("alice") == ["x2"]
    assert restored.competences(np.array([1.0, 1.0, 0.0]), L=2) == {"alice": 0.0}
    edge = restored.graph.edges[("client", "alice"), ("item", "x2")]
    assert edge["unknown"] is True and edge["tries"] == 1


# -- ties ------------------------------------------------------------------------


def test_equal_competence_goes_to_the_answer_based_judge_before_the_model_judge():
    live = ["a-model", "b-answer", "c-none"]
    ranks = {"a-model": exactness([MODEL_BASED]), "b-answer": exactness([ANSWER_BASED, MODEL_BASED]),
             "c-none": exactness([])}
    competences = {"a-model": 0.75, "b-answer": 0.75, "c-none": 0.75}
    assert select_top_m(competences, 3, live, ranks) == ["b-answer", "a-model", "c-none"]
    assert select_top_m({**competences, "a-model": 0.8}, 1, live, ranks) == ["a-model"]  # competence first
    views = [ClientView("a-model", ("add1",), True, (MODEL_BASED,)),
             ClientView("b-answer", ("add1",), True, (ANSWER_BASED,))]
    assert select_experts("add1", views, 1) == ["b-answer"]


# -- the router, with scripted clients ---------------------------------------------


class Scripted:
    """Judges every probe as an honest answer-based client holding ITEMS would (a real evaluator), after
    failing the first ``fail`` calls with ``code`` (the injected fault)."""

    def __init__(self, fail=0, code=grpc.StatusCode.UNAVAILABLE):
        self.fail, self.code, self.calls = fail, code, 0

    def score(self, request, timeout):
        self.calls += 1
        if self.calls <= self.fail:
            raise ScoreError(self.code, "injected")
        return rpb.ScoreResponse(rewards=JUDGE.score(request.domain, request.question, list(request.candidates)))


@pytest.fixture(scope="module")
def embedder():
    return MiniLMEmbedder("cpu")


ITEMS = build_questions("add1", 7, 3)
JUDGE = AnswerBasedEvaluator.from_bank(["add1"], 7, 3)


def federation(**transports):
    clients = RewardClients([])
    for name, (transport, kinds) in transports.items():
        clients.clients.append(
            RewardClient(name, transport, name=name, domains=("add1",), evaluator_kinds=kinds, healthy=True)
        )
    return clients


def accuracy(router, name):
    return router.snapshot()[1][name]["add1"]


def test_a_client_whose_first_probes_fail_is_probed_again_and_judged(embedder, tmp_path):
    flaky = Scripted(fail=len(ITEMS))
    clients = federation(flaky=(flaky, (ANSWER_BASED,)))
    try:
        router = ExpertRouter(clients, embedder, ITEMS, neighbours=3, store=RunStore(tmp_path))
        router.probe_new_clients()  # every probe fails: unknown, not 0
        assert router.graph.unknown_items("flaky") == [i.question_id for i in ITEMS]
        router.probe_new_clients()  # the next pass probes them again
        assert flaky.calls == 2 * len(ITEMS) and accuracy(router, "flaky") == 1.0
        router.probe_new_clients()  # nothing unknown left: no more probes
        assert flaky.calls == 2 * len(ITEMS)
    finally:
        clients.close()


def test_probing_again_is_bounded_and_a_restored_graph_is_probed_again(embedder, tmp_path):
    store = RunStore(tmp_path)
    down = Scripted(fail=10**6, code=grpc.StatusCode.DEADLINE_EXCEEDED)
    clients = federation(down=(down, ()))
    try:
        router = ExpertRouter(clients, embedder, ITEMS, neighbours=3, store=store)
        router.probe_new_clients()  # one failed try per item, saved to the store
    finally:
        clients.close()
    # The orchestrator restarts; the client answers now: its unknown items are probed again.
    back = Scripted()
    clients = federation(down=(back, ()))
    try:
        restored = ExpertRouter(clients, embedder, ITEMS, neighbours=3, store=store)
        assert restored.graph.unknown_items("down") == [i.question_id for i in ITEMS]
        restored.probe_new_clients()
        assert back.calls == len(ITEMS) and accuracy(restored, "down") == 1.0
    finally:
        clients.close()
    # A client that never answers is tried PROBE_TRIES times per item, then stays unknown.
    never = Scripted(fail=10**6)
    clients = federation(never=(never, ()))
    try:
        router = ExpertRouter(clients, embedder, ITEMS, neighbours=3)
        for _ in range(PROBE_TRIES + 2):
            router.probe_new_clients()
        assert never.calls == PROBE_TRIES * len(ITEMS)
        assert router.graph.unknown_items("never") == [i.question_id for i in ITEMS]
    finally:
        clients.close()


def test_a_restored_graph_drops_the_online_confidence_an_older_version_saved_in_it(embedder, tmp_path):
    """Older orchestrators wrote each run's online confidence into the shared graph; restored, the
    next run would start from another run's demotions. The probed graph carries confidence 1."""
    store = RunStore(tmp_path)
    clients = federation(judge=(Scripted(), (ANSWER_BASED,)))
    try:
        router = ExpertRouter(clients, embedder, ITEMS, neighbours=3, store=store)
        router.probe_new_clients()
        router.graph = router.graph.with_confidence({"judge": 0.3})  # what an old run's update left behind
        router._save()
        assert json.loads(store.federation.load_graph()) and router.graph.confidence("judge") < 1.0
        restored = ExpertRouter(clients, embedder, ITEMS, neighbours=3, store=store)
        assert restored.graph.confidence("judge") == 1.0 and accuracy(restored, "judge") == 1.0
    finally:
        clients.close()


def test_equally_competent_clients_route_to_the_answer_based_one(embedder):
    clients = federation(**{"a-model": (Scripted(), (MODEL_BASED,)), "b-answer": (Scripted(), (ANSWER_BASED,))})
    try:
        router = ExpertRouter(clients, embedder, ITEMS, neighbours=3)
        question = build_questions("add1", 8, 1)[0]
        assert [n for n, _ in router.select([question], 1)[0]] == ["b-answer"]
    finally:
        clients.close()
