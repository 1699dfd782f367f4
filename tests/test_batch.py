"""fedgrpo.services.orchestrator.batch: scored groups -> the trainer's sequences."""

import math

import pytest

from fedgrpo.services.orchestrator.batch import train_sequences
from fedgrpo.services.orchestrator.rollout import Sampled

NAN = math.nan


def group(n, first_token):
    return [Sampled(token_ids=[first_token + i], logprobs=[-0.5], text=str(i)) for i in range(n)]


PROMPTS = [[1, 2], [3], [4]]
GROUPS = [group(3, 10), group(2, 20), group(2, 30)]
ADVANTAGES = [
    [0.5, NAN, -0.5],  # signal; candidate 1 was not judged
    [0.0, 0.0],  # every candidate scored the same: no signal
    [NAN, NAN],  # nothing judged at all
]


def test_groups_without_signal_stay_in_the_batch_with_advantage_zero_by_default():
    sequences, zero_signal = train_sequences(PROMPTS, GROUPS, ADVANTAGES)
    assert [(list(s.prompt_token_ids), list(s.completion_token_ids), s.advantage) for s in sequences] == [
        ([1, 2], [10], 0.5), ([1, 2], [12], -0.5), ([3], [20], 0.0), ([3], [21], 0.0),
    ]
    assert list(sequences[0].completion_logprobs) == [-0.5]
    assert zero_signal == 2  # the all-equal group and the unjudged one


def test_drop_leaves_groups_without_signal_out_dapo_style():
    sequences, zero_signal = train_sequences(PROMPTS, GROUPS, ADVANTAGES, "drop")
    assert [(list(s.completion_token_ids), s.advantage) for s in sequences] == [([10], 0.5), ([12], -0.5)]
    assert zero_signal == 2


def test_unjudged_candidates_never_enter_the_batch():
    for mode in ("keep", "drop"):
        sequences, _ = train_sequences([[1]], [group(2, 0)], [[NAN, NAN]], mode)
        assert sequences == []


def test_wrong_shapes_and_modes_name_what_is_wrong():
    with pytest.raises(ValueError, match="one entry per question"):
        train_sequences(PROMPTS[:2], GROUPS, ADVANTAGES)
    with pytest.raises(ValueError, match="question 1: 2 candidates but 3 advantages"):
        train_sequences(PROMPTS, GROUPS, [ADVANTAGES[0], [0.0, 0.0, 0.0], ADVANTAGES[2]])
    with pytest.raises(ValueError, match="zero_signal_groups"):
        train_sequences(PROMPTS, GROUPS, ADVANTAGES, "skip")
