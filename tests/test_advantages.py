"""Hand-computed checks of fedgrpo.services.orchestrator.advantages.

Std convention under test: the sample std (n - 1 denominator), as TRL's
GRPOTrainer. For rewards 1, 2, 3 that is sqrt((1 + 0 + 1) / 2) = 1, whereas
the population std would be sqrt(2 / 3).
"""

import math

import pytest

from fedgrpo.services.orchestrator.advantages import (
    consensus_rewards,
    group_advantages,
    group_has_signal,
    pooled_advantages,
    question_advantages,
    valid_reward,
)

NAN = float("nan")
EPS = 1e-4


def same(actual, expected):
    """Elementwise approx equality where NaN equals NaN."""
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        if math.isnan(e):
            assert math.isnan(a), (actual, expected)
        else:
            assert a == pytest.approx(e), (actual, expected)


# -- valid_reward ---------------------------------------------------------------


def test_valid_reward():
    assert valid_reward(0.5, 0.0, 1.0)
    assert valid_reward(0.0, 0.0, 1.0) and valid_reward(1.0, 0.0, 1.0)  # bounds inclusive
    assert not valid_reward(1.01, 0.0, 1.0)
    assert not valid_reward(-0.01, 0.0, 1.0)
    assert not valid_reward(NAN, 0.0, 1.0)
    assert not valid_reward(math.inf, 0.0, math.inf)
    assert not valid_reward(None, 0.0, 1.0)


# -- consensus_rewards ----------------------------------------------------------

EXPERTS = [
    [1.0, NAN, 0.0, NAN],  # expert 0
    [0.0, 0.5, NAN, NAN],  # expert 1
    [1.0, 1.0, 1.0, NAN],  # expert 2
]


def test_consensus_uniform_excludes_missing():
    same(
        consensus_rewards(EXPERTS),
        [
            (1.0 + 0.0 + 1.0) / 3,  # all three experts
            (0.5 + 1.0) / 2,  # experts 1, 2: the missing one is not a 0 (that would give 0.5)
            (0.0 + 1.0) / 2,  # experts 0, 2
            NAN,  # nobody scored it
        ],
    )


def test_consensus_weights_renormalised_over_valid_experts():
    same(
        consensus_rewards(EXPERTS, weights=[1.0, 2.0, 1.0]),
        [
            (1 * 1.0 + 2 * 0.0 + 1 * 1.0) / (1 + 2 + 1),  # 0.5
            (2 * 0.5 + 1 * 1.0) / (2 + 1),  # 2/3
            (1 * 0.0 + 1 * 1.0) / (1 + 1),  # 0.5
            NAN,
        ],
    )


def test_consensus_zero_weights_over_valid_experts_fall_back_to_uniform():
    same(
        consensus_rewards(EXPERTS, weights=[1.0, 0.0, 0.0]),
        [
            1.0,  # only expert 0 has weight
            (0.5 + 1.0) / 2,  # experts 1, 2 valid, both weight 0 -> uniform over them
            0.0,  # experts 0 (w=1) and 2 (w=0) -> expert 0
            NAN,
        ],
    )


def test_consensus_rejects_bad_input():
    with pytest.raises(ValueError, match="ragged"):
        consensus_rewards([[1.0, 0.0], [1.0]])
    with pytest.raises(ValueError, match="weights"):
        consensus_rewards(EXPERTS, weights=[1.0, -1.0, 1.0])
    with pytest.raises(ValueError, match="weights"):
        consensus_rewards(EXPERTS, weights=[1.0, 1.0])
    assert consensus_rewards([]) == []


# -- group_advantages -----------------------------------------------------------


def test_group_advantages_scaled_by_hand():
    # mean 2, centred (-1, 0, 1), sample std sqrt(2 / 2) = 1
    same(group_advantages([1.0, 2.0, 3.0]), [-1 / (1 + EPS), 0.0, 1 / (1 + EPS)])
    # mean 0.75, centred (-0.75, 0.25, 0.25, 0.25),
    # sample std sqrt((0.5625 + 3 * 0.0625) / 3) = sqrt(0.25) = 0.5
    same(
        group_advantages([0.0, 1.0, 1.0, 1.0]),
        [-0.75 / (0.5 + EPS), 0.25 / (0.5 + EPS), 0.25 / (0.5 + EPS), 0.25 / (0.5 + EPS)],
    )


def test_group_advantages_unscaled_by_hand():
    same(group_advantages([1.0, 2.0, 3.0], scale_rewards=False), [-1.0, 0.0, 1.0])
    same(group_advantages([0.0, 1.0, 1.0, 1.0], scale_rewards=False), [-0.75, 0.25, 0.25, 0.25])


def test_group_advantages_custom_epsilon():
    same(group_advantages([1.0, 2.0, 3.0], epsilon=1.0), [-0.5, 0.0, 0.5])


@pytest.mark.parametrize("scale", [True, False])
def test_missing_reward_does_not_change_the_others(scale):
    full = group_advantages([1.0, 2.0, 3.0], scale_rewards=scale)
    for missing in (NAN, math.inf):
        with_gap = group_advantages([1.0, missing, 2.0, 3.0], scale_rewards=scale)
        same(with_gap, [full[0], NAN, full[1], full[2]])
    # A missing reward counted as 0 would instead shift the mean to 1.5.
    assert group_advantages([1.0, NAN, 2.0, 3.0], scale_rewards=False)[2] == 0.0


def test_group_advantages_few_valid():
    same(group_advantages([NAN, 0.7, NAN]), [NAN, 0.0, NAN])  # one valid: mean-centred 0
    same(group_advantages([NAN, NAN]), [NAN, NAN])
    assert group_advantages([]) == []


def test_all_equal_group_gets_exact_zeros():
    for scale in (True, False):
        assert group_advantages([0.1, 0.1, 0.1], scale_rewards=scale) == [0.0, 0.0, 0.0]
        same(group_advantages([1.0, NAN, 1.0], scale_rewards=scale), [0.0, NAN, 0.0])


def test_group_advantages_rejects_negative_epsilon():
    with pytest.raises(ValueError, match="epsilon"):
        group_advantages([1.0, 2.0], epsilon=-1.0)


# -- pooled_advantages ----------------------------------------------------------


def test_pooled_blocks_by_hand():
    blocks = [[1.0, 0.0, 1.0], [0.0, NAN, 0.0]]
    # valid entries 1, 0, 1, 0, 0: mean 0.4
    unscaled = pooled_advantages(blocks)
    assert len(unscaled) == 2
    same(unscaled[0], [0.6, -0.4, 0.6])
    same(unscaled[1], [-0.4, NAN, -0.4])
    # sample std: sqrt((2 * 0.36 + 3 * 0.16) / 4) = sqrt(0.3)
    s = math.sqrt(0.3) + EPS
    scaled = pooled_advantages(blocks, scale_rewards=True)
    same(scaled[0], [0.6 / s, -0.4 / s, 0.6 / s])
    same(scaled[1], [-0.4 / s, NAN, -0.4 / s])


def test_pooled_differs_from_per_block():
    # Block 1 alone is all equal (no signal); pooled with block 0 it is below average.
    blocks = [[1.0, 0.0, 1.0], [0.0, NAN, 0.0]]
    same(group_advantages(blocks[1], scale_rewards=False), [0.0, NAN, 0.0])
    assert group_has_signal(pooled_advantages(blocks)[1])


def test_pooled_edge_cases():
    assert pooled_advantages([]) == []
    assert all(math.isnan(a) for block in pooled_advantages([[NAN], [NAN]]) for a in block)
    assert pooled_advantages([[0.5, 0.5], [0.5, 0.5]]) == [[0.0, 0.0], [0.0, 0.0]]
    with pytest.raises(ValueError, match="block 1"):
        pooled_advantages([[1.0, 0.0], [1.0]])


# -- group_has_signal -----------------------------------------------------------


def test_group_has_signal():
    assert not group_has_signal([0.0, 0.0, NAN])
    assert not group_has_signal([NAN, NAN])
    assert not group_has_signal([])
    assert group_has_signal([0.0, -0.1, NAN])
    assert group_has_signal(group_advantages([1.0, 2.0]))
    assert not group_has_signal(group_advantages([1.0, 1.0, NAN]))


def test_question_advantages_consensus_averages_experts_then_normalises_over_the_group():
    from fedgrpo.services.orchestrator.advantages import question_advantages

    nan = float("nan")
    rows = [[1.0, 0.0, 1.0, nan], [1.0, 0.0, 0.0, nan]]
    rewards, adv = question_advantages(rows, "consensus", scale_rewards=False, candidates=4)
    assert rewards[:3] == [1.0, 0.0, 0.5] and math.isnan(rewards[3])
    # mean of the valid rewards 0.5: advantages 0.5, -0.5, 0; the missing one stays excluded
    assert adv[:3] == [0.5, -0.5, 0.0] and math.isnan(adv[3])


def test_question_advantages_pooled_normalises_over_the_whole_block():
    from fedgrpo.services.orchestrator.advantages import question_advantages

    # expert 0 scored block [1, 1], expert 1 block [0, 0]: no signal inside either
    # block alone, but the pooled mean 0.5 gives +-0.5
    rewards, adv = question_advantages([[1.0, 1.0], [0.0, 0.0]], "pooled", scale_rewards=False, candidates=4)
    assert rewards == [1.0, 1.0, 0.0, 0.0]
    assert adv == [0.5, 0.5, -0.5, -0.5]
    with pytest.raises(ValueError):
        question_advantages([[1.0], [0.0]], "pooled", scale_rewards=False, candidates=4)
    with pytest.raises(ValueError):
        question_advantages([[1.0]], "median", scale_rewards=False, candidates=1)


def test_question_advantages_without_experts_excludes_everything():
    from fedgrpo.services.orchestrator.advantages import question_advantages

    rewards, adv = question_advantages([], "consensus", scale_rewards=True, candidates=3)
    assert all(math.isnan(x) for x in rewards + adv)


def test_consensus_weighs_experts_by_competence():
    # expert 0 (competence 1.0) says right/wrong; expert 1 (competence 0.5) says the opposite
    rows = [[1.0, 0.0], [0.0, 1.0]]
    rewards, advantages = question_advantages(rows, "consensus", False, 2, weights=[1.0, 0.5])
    assert rewards == pytest.approx([2 / 3, 1 / 3])
    assert advantages == pytest.approx([1 / 6, -1 / 6])
    plain, _ = question_advantages(rows, "consensus", False, 2)
    assert plain == pytest.approx([0.5, 0.5])
