"""Hand-computed checks of fedgrpo.services.orchestrator.online_confidence
(leave-one-out agreement, run-scoped update)."""

import math

import pytest

from fedgrpo.services.orchestrator.competence import select_top_m
from fedgrpo.services.orchestrator.online_confidence import (
    agreement,
    leave_one_out_agreements,
    step_agreements,
    updated_confidence,
)

NAN = math.nan
RIGHT = [1.0, 0.0, 1.0, 0.0]  # what an honest judge says of four candidates
WRONG = [0.0, 1.0, 0.0, 1.0]  # the same calls inverted


def test_agreement_counts_same_side_of_the_threshold():
    accepted = [0.9, 0.1, 0.6, NAN]
    assert agreement([1.0, 0.0, 0.0, 1.0], accepted, 0.5) == pytest.approx(2 / 3)  # last pair excluded
    assert agreement([NAN] * 4, accepted, 0.5) is None
    with pytest.raises(ValueError, match="4 accepted"):
        agreement([1.0], accepted, 0.5)


def test_a_wrong_heavy_expert_is_measured_against_the_other_and_loses_confidence():
    # M = 2: the wrong expert weighs 0.9, the right one 0.1. Against a consensus that includes its own
    # vote, (0.9 * WRONG + 0.1 * RIGHT) = [0.1, 0.9, 0.1, 0.9], the heavy one agreed on 4 of 4 and was
    # never demoted. Left out, it is compared with the right expert alone: 0 of 4.
    heavy, light = leave_one_out_agreements([WRONG, RIGHT], [0.9, 0.1], threshold=0.5)
    assert (heavy, light) == (0.0, 0.0)
    # rate 0.5 from the probed 1.0: 0.5 * 1.0 + 0.5 * 0.0
    assert updated_confidence({"heavy": 1.0, "light": 1.0}, {"heavy": [heavy]}, 0.5) == {"heavy": 0.5, "light": 1.0}


def test_three_experts_single_out_the_one_that_disagrees_with_both_others():
    # Uniform weights. The wrong expert's others agree with each other: consensus RIGHT, agreement 0.
    # Each right expert's others are (WRONG + RIGHT) / 2 = 0.5 everywhere: every call ">= 0.5" is right,
    # so a right expert agrees where it says 1 (2 of 4).
    assert leave_one_out_agreements([WRONG, RIGHT, RIGHT], None, 0.5) == [0.0, 0.5, 0.5]
    # weighted: the two right experts weigh 0.2 and 0.3, the wrong one 0.5
    # expert 1's others: (0.5 * WRONG + 0.3 * RIGHT) / 0.8 = [0.375, 0.625, 0.375, 0.625] -> WRONG's sides: 0
    assert leave_one_out_agreements([WRONG, RIGHT, RIGHT], [0.5, 0.2, 0.3], 0.5) == [0.0, 0.0, 0.0]


def test_one_expert_or_no_common_candidate_measures_nothing():
    assert leave_one_out_agreements([RIGHT], [1.0], 0.5) == [None]
    assert leave_one_out_agreements([], None, 0.5) == []
    # expert 0 scored only candidate 0, which the others did not score: nothing to compare.
    # On candidate 1 expert 1 says 0 where the others say 1 (expert 2), and expert 2 says 1 where
    # the others say 0 (expert 1): both 0 of 1.
    assert leave_one_out_agreements([[1.0, NAN], [NAN, 0.0], [NAN, 1.0]], None, 0.5) == [None, 0.0, 0.0]
    with pytest.raises(ValueError, match="one entry per expert row"):
        leave_one_out_agreements([RIGHT, RIGHT], [1.0], 0.5)


def test_step_agreements_collect_every_question_of_a_step():
    experts = [["a", "b"], ["a"], ["b", "c"]]
    rows = [[RIGHT, RIGHT], [WRONG], [RIGHT, WRONG]]
    weights = [[1.0, 1.0], [1.0], [1.0, 1.0]]
    # question 1 has one expert: nothing measured for it
    assert step_agreements(experts, rows, weights, 0.5) == {"a": [1.0], "b": [1.0, 0.0], "c": [0.0]}


def test_updated_confidence_moves_only_measured_clients_and_starts_from_the_probed_value():
    start = {"a": 0.8}
    new = updated_confidence(start, {"a": [1.0, 0.0], "b": [0.0], "c": []}, 0.25)
    # a: 0.75 * 0.8 + 0.25 * mean(1, 0); b: not in the run's state yet, starts at 1.0: 0.75 * 1.0 + 0
    assert new == pytest.approx({"a": 0.725, "b": 0.75})
    assert start == {"a": 0.8}  # the caller's state is not mutated


def test_a_poisoning_client_loses_its_questions_within_a_few_steps():
    """Three equally competent clients, M = 2, ties by name; client a inverts every reward. Steps of
    routing -> leave-one-out agreement -> update, as the run loop does (rate 0.5)."""
    truth = {"a": WRONG, "b": RIGHT, "c": RIGHT}
    confidence = {"a": 1.0, "b": 1.0, "c": 1.0}
    chosen = []
    for _ in range(4):
        experts = select_top_m(confidence, 2, confidence)  # competence = confidence x the same accuracy
        chosen.append(experts)
        agreements = step_agreements([experts], [[truth[n] for n in experts]], [[confidence[n] for n in experts]], 0.5)
        confidence = updated_confidence(confidence, agreements, 0.5)
    # step 1: a, b disagree (both 0.5); step 2: c, a disagree (c 0.5, a 0.25); then b, c agree and climb
    assert chosen == [["a", "b"], ["c", "a"], ["b", "c"], ["b", "c"]]
    assert confidence == pytest.approx({"a": 0.25, "b": 0.875, "c": 0.875})


def test_run_confidence_starts_from_the_probes_or_its_saved_values_and_reports_what_moved():
    from fedgrpo.services.orchestrator.online_confidence import RunConfidence

    probed = {"a": 1.0, "b": 1.0, "c": 1.0}
    fresh, resumed = RunConfidence(probed), RunConfidence(probed, {"a": 0.25})
    assert fresh.values == probed and resumed.values == {"a": 0.25, "b": 1.0, "c": 1.0}
    moved = fresh.update([["a", "b"]], [[WRONG, RIGHT]], [[1.0, 1.0]], 0.5, 0.5)
    assert moved == "a 0.500 (agreed 0.00), b 0.500 (agreed 0.00)"
    assert fresh.of(["a", "c"]) == {"a": 0.5, "c": 1.0} and fresh.of() == {"a": 0.5, "b": 0.5, "c": 1.0}
    assert probed == {"a": 1.0, "b": 1.0, "c": 1.0}
    assert fresh.update([["a"]], [[WRONG]], [[1.0]], 0.5, 0.5) == ""  # one expert: nothing measured
