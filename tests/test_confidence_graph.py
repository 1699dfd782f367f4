"""Hand-computed checks of fedgrpo.services.orchestrator.confidence_graph.

The small federation used below: 2-d embeddings, domain "x" items point along
the first axis, domain "y" items along the second. Every item is probed with
4 candidates of known correctness TRUTH = [T, F, T, F]. Judged rewards
(threshold 0.5) and the resulting accuracies:

    PERFECT = [1, 0, 1, 0] -> judged correct T F T F -> 4/4 = 1.0
    CHANCE  = [1, 1, 1, 1] -> judged correct T T T T -> 2/4 = 0.5
    POOR    = [0, 1, 1, 1] -> judged correct F T T T -> 1/4 = 0.25

Client "alice" judges x perfectly and y at chance, "bob" the opposite,
"carol" is poor everywhere.
"""

import json
import math

import networkx as nx
import numpy as np
import pytest

from fedgrpo.services.orchestrator.competence import (
    competence,
    cosine_similarities,
    judging_accuracy,
    nearest_items,
    online_update,
    select_top_m,
)
from fedgrpo.services.orchestrator.confidence_graph import ConfidenceGraph

NAN = float("nan")
INF = float("inf")
TRUTH = [True, False, True, False]
PERFECT = [1.0, 0.0, 1.0, 0.0]
CHANCE = [1.0, 1.0, 1.0, 1.0]
POOR = [0.0, 1.0, 1.0, 1.0]
X_QUESTION = np.array([1.0, 0.05])
Y_QUESTION = np.array([0.05, 1.0])


# -- cosine_similarities ----------------------------------------------------------


def test_cosine_similarities_by_hand():
    items = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-2.0, 0.0], [0.0, 0.0], [3.0, 4.0]])
    sims = cosine_similarities(np.array([1.0, 0.0]), items)
    # [1,1]: 1 / sqrt(2); [3,4]: 3 / 5; the zero item: 0 by definition.
    assert sims == pytest.approx([1.0, 0.0, 1 / math.sqrt(2), -1.0, 0.0, 0.6])


def test_cosine_zero_query_is_zero_not_nan():
    sims = cosine_similarities(np.zeros(2), np.array([[1.0, 0.0], [0.0, 0.0]]))
    assert sims.tolist() == [0.0, 0.0]


def test_cosine_no_items_and_bad_shapes():
    assert cosine_similarities(np.array([1.0, 0.0]), np.zeros((0, 2))).shape == (0,)
    with pytest.raises(ValueError, match="items must be a matrix"):
        cosine_similarities(np.array([1.0, 0.0]), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="query must be a 1-d vector"):
        cosine_similarities(np.zeros((1, 2)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="query must be finite"):
        cosine_similarities(np.array([NAN, 0.0]), np.zeros((3, 2)))


# -- nearest_items ------------------------------------------------------------------


def test_nearest_items_ties_go_to_lower_index():
    # sims with [1, 0]: 0, 1, 1, 1/sqrt(2)
    items = np.array([[0.0, 1.0], [2.0, 0.0], [1.0, 0.0], [1.0, 1.0]])
    assert nearest_items(np.array([1.0, 0.0]), items, 2) == [1, 2]
    assert nearest_items(np.array([1.0, 0.0]), items, 3) == [1, 2, 3]
    assert nearest_items(np.array([1.0, 0.0]), items, 0) == []


def test_nearest_items_k_larger_than_n_returns_all():
    items = np.array([[0.0, 1.0], [2.0, 0.0], [1.0, 0.0], [1.0, 1.0]])
    assert nearest_items(np.array([1.0, 0.0]), items, 10) == [1, 2, 3, 0]


def test_nearest_items_tie_survives_float_rounding():
    # Raw floats give [1,1] a similarity of 0.9999999999999998 and [3,3] exactly 1.0;
    # they are the same direction, so it is a tie and the lower index wins.
    query, items = np.array([1.0, 1.0]), np.array([[1.0, 1.0], [3.0, 3.0]])
    raw = cosine_similarities(query, items)
    assert raw[0] != raw[1]  # the rounding this test guards against
    assert nearest_items(query, items, 1) == [0]


def test_nearest_items_rejects_negative_k():
    with pytest.raises(ValueError, match="k must be an integer >= 0, got -1"):
        nearest_items(np.array([1.0]), np.array([[1.0]]), -1)


# -- judging_accuracy ---------------------------------------------------------------


def test_judging_accuracy_by_hand():
    # judged correct (>= 0.5): T F T F against truth T F T T -> 3 of 4 agree
    assert judging_accuracy([0.9, 0.2, 0.5, 0.49], [True, False, True, True], 0.5) == 0.75
    assert judging_accuracy(PERFECT, TRUTH, 0.5) == 1.0
    assert judging_accuracy(CHANCE, TRUTH, 0.5) == 0.5
    assert judging_accuracy(POOR, TRUTH, 0.5) == 0.25


def test_judging_accuracy_threshold_is_inclusive():
    assert judging_accuracy([0.5], [True], 0.5) == 1.0
    assert judging_accuracy([0.5], [False], 0.5) == 0.0
    assert judging_accuracy([0.4999], [False], 0.5) == 1.0


def test_judging_accuracy_invalid_is_none():
    assert judging_accuracy([1.0, NAN], [True, False], 0.5) is None
    assert judging_accuracy([1.0, INF], [True, False], 0.5) is None
    assert judging_accuracy([1.0, -INF], [True, False], 0.5) is None
    assert judging_accuracy([1.0], [True, False], 0.5) is None
    assert judging_accuracy([], [], 0.5) is None
    assert judging_accuracy(["yes", 0.0], [True, False], 0.5) is None


# -- competence ----------------------------------------------------------------------


def test_competence_missing_items_count_zero():
    accuracy = {"a": 1.0, "b": 0.5}
    assert competence(accuracy, ["a", "b", "c"]) == pytest.approx(0.5)  # (1 + 0.5 + 0) / 3
    assert competence(accuracy, ["c"]) == 0.0
    assert competence(accuracy, []) == 0.0


def test_competence_weighted_by_hand():
    accuracy = {"a": 1.0, "b": 0.5}
    # (0.5 * 1 + 0.25 * 0.5 + 0.25 * 0) / (0.5 + 0.25 + 0.25) = 0.625
    assert competence(accuracy, ["a", "b", "c"], [0.5, 0.25, 0.25]) == pytest.approx(0.625)
    # (2 * 1 + 1 * 0.5) / 3 = 5/6
    assert competence(accuracy, ["a", "b"], [2.0, 1.0]) == pytest.approx(5 / 6)
    # all-zero weights fall back to the plain mean
    assert competence(accuracy, ["a", "b"], [0.0, 0.0]) == pytest.approx(0.75)


def test_competence_rejects_bad_weights():
    with pytest.raises(ValueError, match="one entry per neighbour"):
        competence({"a": 1.0}, ["a"], [1.0, 1.0])
    with pytest.raises(ValueError, match=r"weights\[0\] must be a finite number >= 0"):
        competence({"a": 1.0}, ["a"], [-0.1])


# -- select_top_m ------------------------------------------------------------------


def test_select_top_m_ties_by_name():
    competences = {"b": 0.8, "a": 0.8, "c": 0.9, "d": 0.1}
    live = {"a", "b", "c", "d"}
    assert select_top_m(competences, 2, live) == ["c", "a"]
    assert select_top_m(competences, 3, live) == ["c", "a", "b"]
    assert select_top_m(competences, 0, live) == []


def test_select_top_m_live_filter_and_fewer_than_m():
    competences = {"b": 0.8, "a": 0.8, "c": 0.9, "d": 0.1}
    # c is not live; e is live but unknown, so it counts 0
    assert select_top_m(competences, 2, ["a", "d", "e"]) == ["a", "d"]
    assert select_top_m(competences, 5, ["a", "d", "e"]) == ["a", "d", "e"]
    assert select_top_m(competences, 2, []) == []


def test_select_top_m_rejects_bad_input():
    with pytest.raises(ValueError, match="m must be an integer >= 0"):
        select_top_m({}, -1, ["a"])
    with pytest.raises(ValueError, match=r"competences\['a'\] must be finite"):
        select_top_m({"a": NAN}, 1, ["a"])


# -- online_update -----------------------------------------------------------------


def test_online_update_by_hand():
    assert online_update(0.5, 1.0, 0.2) == pytest.approx(0.6)  # 0.8 * 0.5 + 0.2 * 1
    assert online_update(0.8, 0.0, 0.25) == pytest.approx(0.6)  # 0.75 * 0.8
    assert online_update(0.3, 0.9, 0.0) == pytest.approx(0.3)
    assert online_update(0.3, 0.9, 1.0) == pytest.approx(0.9)


def test_online_update_clips_to_unit_interval():
    assert online_update(0.9, 1.5, 0.5) == 1.0  # 0.45 + 0.75 = 1.2 -> 1
    assert online_update(0.1, -1.0, 0.5) == 0.0  # 0.05 - 0.5 = -0.45 -> 0


def test_online_update_rejects_bad_input():
    with pytest.raises(ValueError, match="rate must be in \\[0, 1\\], got 1.5"):
        online_update(0.5, 0.5, 1.5)
    with pytest.raises(ValueError, match="agreement must be a finite number"):
        online_update(0.5, NAN, 0.1)


# -- ConfidenceGraph ----------------------------------------------------------------


def build_graph(keep_questions: bool = False) -> ConfidenceGraph:
    graph = ConfidenceGraph(keep_questions=keep_questions)
    graph.add_items(
        ["x1", "x2", "x3", "y1", "y2", "y3"],
        ["x", "x", "x", "y", "y", "y"],
        np.array([[1.0, 0.0], [0.9, 0.1], [0.8, 0.2], [0.0, 1.0], [0.1, 0.9], [0.2, 0.8]]),
    )
    judgements = {"alice": (PERFECT, CHANCE), "bob": (CHANCE, PERFECT), "carol": (POOR, POOR)}
    for client, (on_x, on_y) in judgements.items():
        for item_id in graph.items():
            judged = on_x if item_id.startswith("x") else on_y
            assert graph.record_probe(client, item_id, judged, TRUTH, 0.0, 1.0, 0.5) is None
    return graph


ALL = ["alice", "bob", "carol"]


def test_graph_structure():
    graph = build_graph()
    assert graph.clients() == ALL
    assert graph.items() == ["x1", "x2", "x3", "y1", "y2", "y3"]
    assert graph.graph.number_of_nodes() == 9
    assert graph.graph.number_of_edges() == 18
    edge = graph.graph.edges[("client", "alice"), ("item", "y2")]
    assert edge == {"accuracy": 0.5, "problem": "", "error": 0.5}  # CHANCE misses 2 of 4: squared error 2/4
    assert graph.graph.nodes[("item", "y2")]["domain"] == "y"
    assert graph.confidence("alice") == 1.0


def test_probe_errors_are_what_the_reward_router_is_fitted_on():
    graph = build_graph()
    graph.record_probe("carol", "x1", [0.5, float("nan"), 0.5, 0.5], TRUTH, 0.0, 1.0, 0.5)  # garbage: worst
    graph.record_unknown("dave", "y1", "timeout")  # failed in transport: not known, not counted
    ids, features, errors = graph.probe_errors(["alice", "bob", "carol", "dave", "erin"])
    assert ids == graph.items() and features.shape == (6, 2)
    rows = {i: errors[n].tolist() for n, i in enumerate(ids)}
    assert rows["x2"][:3] == [0.0, 0.5, 0.75]  # alice perfect on x, bob at chance, carol POOR (3 of 4 wrong)
    assert rows["y2"][:3] == [0.5, 0.0, 0.75]
    assert rows["x1"][2] == 1.0
    assert all(math.isnan(rows[i][3]) and math.isnan(rows[i][4]) for i in ids)  # never judged


def test_competences_over_nearest_items():
    graph = build_graph()
    # The 3 nearest items of the x-like question are x1..x3.
    assert graph.competences(X_QUESTION, L=3) == pytest.approx({"alice": 1.0, "bob": 0.5, "carol": 0.25})
    assert graph.competences(Y_QUESTION, L=3) == pytest.approx({"alice": 0.5, "bob": 1.0, "carol": 0.25})
    # With all 6 items alice and bob are equal: (3 * 1 + 3 * 0.5) / 6 = 0.75
    assert graph.competences(X_QUESTION, L=20) == pytest.approx({"alice": 0.75, "bob": 0.75, "carol": 0.25})


def test_competences_similarity_weighted_by_hand():
    graph = build_graph()
    query = np.array([1.0, 0.0])
    # L = 4: x1, x2, x3 and then y3 (sim 0.2 / |[0.2, 0.8]|), before y2 and y1.
    sims = cosine_similarities(query, np.array([[1.0, 0.0], [0.9, 0.1], [0.8, 0.2], [0.2, 0.8]]))
    alice = (sims[0] + sims[1] + sims[2] + 0.5 * sims[3]) / sims.sum()
    bob = (0.5 * (sims[0] + sims[1] + sims[2]) + sims[3]) / sims.sum()
    weighted = graph.competences(query, L=4, similarity_weighted=True)
    assert weighted == pytest.approx({"alice": alice, "bob": bob, "carol": 0.25})
    # The unweighted mean over the same 4 items: alice (3 + 0.5) / 4, bob (1.5 + 1) / 4
    assert graph.competences(query, L=4) == pytest.approx({"alice": 0.875, "bob": 0.625, "carol": 0.25})


def test_route_picks_the_domain_expert():
    graph = build_graph()
    assert graph.route(X_QUESTION, 1, ALL, L=3) == ["alice"]
    assert graph.route(Y_QUESTION, 1, ALL, L=3) == ["bob"]
    assert graph.route(X_QUESTION, 2, ALL, L=3) == ["alice", "bob"]
    assert graph.route(Y_QUESTION, 2, ALL, L=3) == ["bob", "alice"]
    assert graph.route(Y_QUESTION, 5, ALL, L=3) == ["bob", "alice", "carol"]


def test_route_respects_live_clients():
    graph = build_graph()
    assert graph.route(X_QUESTION, 2, ["bob", "carol"], L=3) == ["bob", "carol"]
    # a live client that was never probed is incompetent but still selectable
    assert graph.route(X_QUESTION, 3, ["carol", "dave"], L=3) == ["carol", "dave"]


def test_garbage_probe_records_zero_and_explains():
    graph = build_graph()
    message = graph.record_probe("alice", "x1", [1.0, NAN, 1.0, 0.0], TRUTH, 0.0, 1.0, 0.5)
    assert message is not None and "'alice'" in message and "'x1'" in message and "judged_rewards[1]" in message
    assert graph.graph.edges[("client", "alice"), ("item", "x1")] == {"accuracy": 0.0, "problem": message, "error": 1.0}

    too_few = graph.record_probe("alice", "x2", [1.0, 0.0], TRUTH, 0.0, 1.0, 0.5)
    assert too_few is not None and "must hold 4 rewards" in too_few and "got 2" in too_few
    out_of_range = graph.record_probe("alice", "x3", [1.0, 0.0, 7.0, 0.0], TRUTH, 0.0, 1.0, 0.5)
    assert out_of_range is not None and "judged_rewards[2]" in out_of_range and "7.0" in out_of_range

    # alice now knows nothing useful about x: bob (0.5) overtakes her (0)
    assert graph.competences(X_QUESTION, L=3)["alice"] == 0.0
    assert graph.route(X_QUESTION, 1, ALL, L=3) == ["bob"]

    # a later valid probe replaces the rejected one
    assert graph.record_probe("alice", "x1", PERFECT, TRUTH, 0.0, 1.0, 0.5) is None
    assert graph.graph.edges[("client", "alice"), ("item", "x1")] == {"accuracy": 1.0, "problem": "", "error": 0.0}


def test_probe_on_unknown_item_is_a_caller_error():
    graph = build_graph()
    with pytest.raises(KeyError, match="nope"):
        graph.record_probe("alice", "nope", PERFECT, TRUTH, 0.0, 1.0, 0.5)


def test_online_confidence_multiplies_competence():
    graph = build_graph()
    # 0.4 * 1 + 0.6 * 0 = 0.4; alice's x competence becomes 0.4 * 1.0 < bob's 0.5
    view = graph.with_confidence({"alice": online_update(1.0, 0.0, 0.6)})
    assert view.confidence("alice") == pytest.approx(0.4)
    assert view.competences(X_QUESTION, L=3)["alice"] == pytest.approx(0.4)
    assert view.route(X_QUESTION, 2, ALL, L=3) == ["bob", "alice"]
    with pytest.raises(KeyError):
        view.confidence("dave")


def test_a_runs_confidence_scales_competence_without_touching_the_graph():
    graph = build_graph()
    # the run's view: alice at 0.4, carol unnamed (keeps the graph's 1.0)
    assert graph.competences(X_QUESTION, L=3, confidence={"alice": 0.4, "dave": 0.1}) == pytest.approx(
        {"alice": 0.4, "bob": 0.5, "carol": 0.25}
    )
    assert graph.competences(X_QUESTION, L=3) == pytest.approx({"alice": 1.0, "bob": 0.5, "carol": 0.25})
    view = graph.with_confidence({"alice": 0.4})
    assert view.confidence("alice") == 0.4 and view.competences(X_QUESTION, L=3)["alice"] == pytest.approx(0.4)
    assert graph.confidence("alice") == 1.0  # the probed graph is unchanged
    assert view.items() == graph.items() and view.graph.number_of_edges() == graph.graph.number_of_edges()


def test_remove_client():
    graph = build_graph()
    graph.remove_client("alice")
    assert graph.clients() == ["bob", "carol"]
    assert graph.graph.number_of_edges() == 12
    assert graph.route(X_QUESTION, 1, ALL, L=3) == ["bob"]
    with pytest.raises(KeyError, match="alice"):
        graph.remove_client("alice")


def test_client_domain_weights():
    graph = build_graph()
    graph.add_client("dave")  # never probed: 0 everywhere
    assert graph.client_domain_weights() == {
        "alice": {"x": 1.0, "y": 0.5},
        "bob": {"x": 0.5, "y": 1.0},
        "carol": {"x": 0.25, "y": 0.25},
        "dave": {"x": 0.0, "y": 0.0},
    }


def test_keep_questions_adds_question_nodes():
    graph = build_graph(keep_questions=True)
    assert graph.route(X_QUESTION, 1, ALL, L=3, question_id="q1") == ["alice"]
    node = ("question", "q1")
    assert graph.graph.nodes[node]["kind"] == "question"
    neighbours = {item for _, item in graph.graph.edges(node)}
    assert neighbours == {("item", "x1"), ("item", "x2"), ("item", "x3")}
    assert graph.graph.edges[node, ("item", "x1")]["similarity"] == pytest.approx(1 / math.hypot(1.0, 0.05))
    with pytest.raises(ValueError, match="question_id must be a non-empty string"):
        graph.route(X_QUESTION, 1, ALL, L=3)
    # without keep_questions nothing is added
    plain = build_graph()
    plain.route(X_QUESTION, 1, ALL, L=3, question_id="q1")
    assert plain.graph.number_of_nodes() == 9


def test_add_items_validation():
    graph = build_graph()
    with pytest.raises(ValueError, match="item_id must be unique, got 'x1'"):
        graph.add_items(["x1"], ["x"], np.array([[1.0, 0.0]]))
    with pytest.raises(ValueError, match="d=2"):
        graph.add_items(["z1"], ["z"], np.array([[1.0, 0.0, 0.0]]))
    with pytest.raises(ValueError, match="domains must have one entry per item"):
        graph.add_items(["z1", "z2"], ["z"], np.array([[1.0, 0.0], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="question_embedding must have shape"):
        graph.competences(np.array([1.0, 0.0, 0.0]), L=3)


def test_empty_graph_routes_by_name():
    graph = ConfidenceGraph()
    assert graph.competences(X_QUESTION) == {}
    assert graph.route(X_QUESTION, 2, ["b", "a", "c"]) == ["a", "b"]


# -- export ---------------------------------------------------------------------------


def test_json_round_trip_preserves_routing():
    graph = build_graph(keep_questions=True)
    graph.record_probe("carol", "y1", [NAN], [True], 0.0, 1.0, 0.5)  # a rejected probe survives too
    graph = graph.with_confidence({"bob": online_update(1.0, 0.2, 0.3)})  # 0.7 + 0.06 = 0.76
    graph.route(Y_QUESTION, 2, ALL, L=3, question_id="q7")

    text = json.dumps(graph.to_json())  # no numpy types, no tuples as keys
    restored = ConfidenceGraph.from_json(json.loads(text))

    assert restored.keep_questions
    assert restored.clients() == ALL
    assert restored.items() == graph.items()
    assert restored.confidence("bob") == pytest.approx(0.76)
    assert nx.utils.graphs_equal(restored.graph, graph.graph)
    rng = np.random.default_rng(0)
    for question in [X_QUESTION, Y_QUESTION, *rng.normal(size=(10, 2))]:
        for L in (1, 3, 4, 20):
            for weighted in (False, True):
                assert restored.competences(question, L, weighted) == graph.competences(question, L, weighted)
                routed = graph.route(question, 2, ALL, L, weighted, "q")
                assert restored.route(question, 2, ALL, L, weighted, "q") == routed


def test_from_json_rejects_other_formats():
    with pytest.raises(ValueError, match="data must be format"):
        ConfidenceGraph.from_json({"format": "something else", "version": 1})


def test_write_graphml(tmp_path):
    graph = build_graph(keep_questions=True)
    graph.route(X_QUESTION, 1, ALL, L=3, question_id="q1")
    graph.record_probe("carol", "y1", [1.0], TRUTH, 0.0, 1.0, 0.5)
    path = tmp_path / "confidence.graphml"
    graph.write_graphml(path)

    loaded = nx.read_graphml(path)
    assert loaded.number_of_nodes() == 10  # 3 clients, 6 items, 1 question
    assert loaded.number_of_edges() == 18 + 3
    assert loaded.nodes["client:alice"]["confidence"] == 1.0
    assert loaded.nodes["item:y1"]["domain"] == "y"
    assert loaded.edges["client:bob", "item:y1"]["accuracy"] == 1.0
    assert "must hold 4 rewards" in loaded.edges["client:carol", "item:y1"]["problem"]
    assert loaded.edges["question:q1", "item:x1"]["similarity"] == pytest.approx(1 / math.hypot(1.0, 0.05))
