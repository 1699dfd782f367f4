"""FedMOA's math against hand-computed values: objective scores, hypergradient weights, aggregation weights."""

import math

import pytest
import torch

from services.orchestrator.fedmoa.aggregation import (
    aggregate,
    clip_to_median,
    fedavg_weights,
    task_accuracy_weights,
    task_coverage,
)
from services.reward_client.local_training.objective_weights import (
    ObjectiveWeights,
    hypergradient,
    objective_advantages,
    update_weights,
    weighted_reward,
)
from services.reward_client.local_training.objectives import (
    OBJECTIVES,
    brevity_score,
    correctness_score,
    format_score,
    score_objectives,
)

SQRT3 = math.sqrt(3)


def test_objective_scores():
    assert OBJECTIVES == ("correctness", "format", "brevity")
    assert format_score("42") == 1.0
    assert format_score("Let me think.\nSo the answer is 42") == 0.5
    assert format_score("\\boxed{7}") == 0.5
    assert format_score("Let me think.\n7 apples and then 3") == 0.0
    assert format_score("") == 0.0
    assert brevity_score(8, 32) == 0.75
    assert brevity_score(40, 32) == 0.0
    assert correctness_score(0.5, 0.0, 2.0) == 0.25
    assert math.isnan(correctness_score(float("nan"), 0.0, 1.0))
    assert score_objectives("42", 1.0, 4, 16) == [1.0, 1.0, 0.75]


def test_initial_weights_are_the_given_ones():
    w = ObjectiveWeights.initial(OBJECTIVES, [3, 1, 1], min_weight=0.05)
    assert w.weights == pytest.approx((0.6, 0.2, 0.2))
    assert w.as_dict() == pytest.approx({"correctness": 0.6, "format": 0.2, "brevity": 0.2})
    with pytest.raises(ValueError, match="min_weight"):
        ObjectiveWeights.initial(OBJECTIVES, [1, 1, 1], min_weight=0.4)
    with pytest.raises(ValueError, match="weights"):
        ObjectiveWeights.initial(OBJECTIVES, [1, 0, 1])


def test_weighted_reward():
    assert weighted_reward([1.0, 0.5, 0.25], [0.5, 0.25, 0.25]) == pytest.approx(0.5 + 0.125 + 0.0625)
    assert math.isnan(weighted_reward([float("nan"), 1, 1], [0.4, 0.3, 0.3]))


def test_saturated_objective_has_zero_hypergradient_and_loses_weight():
    # One group of 3: correctness [1, 0, 0] (mean 1/3, sample std 1/sqrt(3)); format met by all (saturated).
    group = [[1.0, 1.0], [0.0, 1.0], [0.0, 1.0]]
    a = objective_advantages(group, epsilon=0.0)
    assert [row[0] for row in a] == pytest.approx([2 / SQRT3, -1 / SQRT3, -1 / SQRT3])
    assert [row[1] for row in a] == [0.0, 0.0, 0.0]
    h = hypergradient([group], primary=0, epsilon=0.0)
    assert h == pytest.approx([2 / 3, 0.0])  # (4/3 + 1/3 + 1/3) / 3
    # From equal weights: dJ/dlam = w_j (h_j - w.h) = [0.5 (2/3 - 1/3), 0.5 (0 - 1/3)] = [1/6, -1/6]; lr 3 -> [.5, -.5]
    w = update_weights(ObjectiveWeights.initial(["correctness", "format"], [1, 1], min_weight=0.0), h, 3.0)
    e = math.exp(1.0)
    assert w.weights == pytest.approx((e / (e + 1), 1 / (e + 1)))  # 0.7311, 0.2689


def test_conflicting_objective_has_negative_hypergradient():
    group = [[1.0, 0.0], [0.0, 1.0]]  # the correct answer is the badly formatted one
    assert hypergradient([group], primary=0, epsilon=0.0) == pytest.approx([0.5, -0.5])


def test_min_weight_floor_and_scale():
    start = ObjectiveWeights.initial(["correctness", "format"], [1, 1], min_weight=0.1)
    # span 0.8: step = 0.8 * [1/6, -1/6]; lr 3.75 -> logits +-0.5 -> weights 0.8 * softmax + 0.1
    w = update_weights(start, [2 / 3, 0.0], 3.75)
    e = math.exp(1.0)
    assert w.weights == pytest.approx((0.8 * e / (e + 1) + 0.1, 0.8 / (e + 1) + 0.1))
    for _ in range(200):
        w = update_weights(w, [1.0, -1.0], 10.0)
    assert 0.1 <= w.weights[1] < 0.101 and sum(w.weights) == pytest.approx(1.0)  # never below the floor


def test_missing_scores_are_left_out():
    group = [[1.0, 1.0], [0.0, float("nan")], [0.0, 0.0]]
    a = objective_advantages(group, epsilon=0.0)
    assert a[1][1] == 0.0  # the missing format score adds nothing to h
    assert [a[0][1], a[2][1]] == pytest.approx([1 / math.sqrt(2), -1 / math.sqrt(2)])


def test_fedavg_weights_cap_declared_samples():
    assert fedavg_weights([10, 30, 1000], asked=40) == pytest.approx([0.125, 0.375, 0.5])
    assert fedavg_weights([0, 0], asked=8) == [0.5, 0.5]


def test_task_accuracy_weights():
    # raw: 1 * exp((0.2 - 0.6) / 0.2) = e^-2 and 0.5 * e^0
    p = task_accuracy_weights([1.0, 0.5], [0.2, 0.6], temperature=0.2)
    raw = [math.exp(-2), 0.5]
    assert p == pytest.approx([raw[0] / sum(raw), raw[1] / sum(raw)])  # 0.2130, 0.7870
    assert task_accuracy_weights([0.0, 0.0], [0.5, 0.5], 1.0) == [0.5, 0.5]  # no coverage: accuracy alone
    assert task_accuracy_weights([1.0, 0.0], [0.0, 1.0], 0.1) == [1.0, 0.0]  # covers no validation task
    with pytest.raises(ValueError, match=r"accuracy\[1\]"):
        task_accuracy_weights([1.0, 1.0], [0.5, 1.5], 1.0)
    assert task_coverage(["add2"], ["add2", "add2", "chain3", "letter_counting"]) == 0.5


def test_aggregate_is_the_weighted_mean_of_the_adapters():
    g = {"a": torch.zeros(2), "b": torch.ones(1)}
    out = aggregate(g, [{"a": torch.tensor([1.0, 2.0]), "b": torch.tensor([1.0])},
                        {"a": torch.tensor([3.0, 4.0]), "b": torch.tensor([5.0])}], [0.25, 0.75])
    assert out["a"].tolist() == [2.5, 3.5] and out["b"].tolist() == [4.0]


def test_clip_to_median_bounds_an_outsized_update_by_the_others_median():
    deltas = [{"x": torch.tensor([1.0, 0.0])}, {"x": torch.tensor([0.0, 2.0])}, {"x": torch.tensor([100.0, 0.0])}]
    clipped = clip_to_median(deltas, factor=2.0)  # the third: the others' median norm 1.5 -> bound 3
    assert clipped[0]["x"].tolist() == [1.0, 0.0] and clipped[1]["x"].tolist() == [0.0, 2.0]
    assert clipped[2]["x"].tolist() == pytest.approx([3.0, 0.0])
    # Two clients: the median of both norms (50.5) would let 100 through at 3x; the other's (1) does not.
    pair = clip_to_median([{"x": torch.tensor([1.0])}, {"x": torch.tensor([-100.0])}], factor=3.0)
    assert pair[0]["x"].tolist() == [1.0] and pair[1]["x"].tolist() == pytest.approx([-3.0])
    alone = clip_to_median([{"x": torch.tensor([100.0])}], factor=3.0)  # no one to compare with
    assert alone[0]["x"].tolist() == [100.0]


def test_validation_questions_come_from_every_domain_in_turn():
    from fedgrpo.tasks import LabelledQuestion
    from services.orchestrator.fedmoa.run import spread

    items = [LabelledQuestion(f"{d}{i}", d, f"q {d} {i}") for d in ("add2", "chain3") for i in range(5)]
    assert [i.question_id for i in spread(items, 5)] == ["add20", "chain30", "add21", "chain31", "add22"]
