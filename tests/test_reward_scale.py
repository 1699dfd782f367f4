"""Hand-checked values of the reward normalisation (fedgrpo.services.orchestrator.reward_scale) and the
advantage bound (fedgrpo.advantage_bound)."""

import math

import pytest

from fedgrpo.advantage_bound import DEFAULT_MAX_ADVANTAGE, clamped
from fedgrpo.services.orchestrator.reward_scale import declared_range_problem, normalised, normalised_row

NAN = math.nan


def same(actual, expected):
    assert len(actual) == len(expected), (actual, expected)
    for a, e in zip(actual, expected):
        assert (math.isnan(a) and math.isnan(e)) or a == e, (actual, expected)


# -- normalised -----------------------------------------------------------------


def test_the_federation_range_is_left_as_it_is():
    same([normalised(r, 0.0, 1.0) for r in (0.0, 0.1, 0.25, 0.9, 1.0)], [0.0, 0.1, 0.25, 0.9, 1.0])


def test_a_declared_range_maps_linearly_onto_0_1():
    same([normalised(r, 0.0, 10.0) for r in (0.0, 2.5, 5.0, 10.0)], [0.0, 0.25, 0.5, 1.0])
    same([normalised(r, -1.0, 1.0) for r in (-1.0, 0.0, 0.5, 1.0)], [0.0, 0.5, 0.75, 1.0])
    same([normalised(r, 2.0, 6.0) for r in (2.0, 3.0, 6.0)], [0.0, 0.25, 1.0])


def test_a_huge_declared_range_buys_nothing():
    """The attack: [0, 3.4e38] declared, rewards at its top. On the federation's scale they are 1 at most."""
    huge = 3.4e38
    same([normalised(r, 0.0, huge) for r in (0.0, huge / 2, huge)], [0.0, 0.5, 1.0])
    assert normalised(1.0, 0.0, huge) == pytest.approx(2.94e-39, rel=1e-2)  # an honest-looking 1 is ~0
    # the widest float32 range, both ends
    same([normalised(r, -huge, huge) for r in (-huge, 0.0, huge)], [0.0, 0.5, 1.0])


def test_rewards_outside_the_declared_range_or_not_finite_are_dropped():
    same([normalised(r, 0.0, 1.0) for r in (-0.01, 1.01, NAN, math.inf, -math.inf)], [NAN] * 5)
    same([normalised(r, 0.0, 10.0) for r in (10.5, -1.0)], [NAN, NAN])


def test_normalised_row_counts_what_it_dropped():
    row, dropped = normalised_row([0.0, 5.0, 11.0, NAN, 10.0], 0.0, 10.0)
    same(row, [0.0, 0.5, NAN, NAN, 1.0])
    assert dropped == 2
    assert normalised_row([], 0.0, 1.0) == ([], 0)


@pytest.mark.parametrize("low, high", [(1.0, 1.0), (2.0, 1.0), (0.0, math.inf), (NAN, 1.0)])
def test_an_unusable_range_is_refused(low, high):
    assert declared_range_problem(low, high) is not None
    with pytest.raises(ValueError, match="reward range"):
        normalised(0.5, low, high)


def test_a_usable_range_has_no_problem():
    assert declared_range_problem(0.0, 1.0) is None
    assert declared_range_problem(-3.4e38, 3.4e38) is None


# -- clamped ----------------------------------------------------------------------


def test_advantages_within_the_bound_are_untouched():
    assert clamped([0.0, -1.5, 2.47, 10.0, -10.0], 10.0) == ([0.0, -1.5, 2.47, 10.0, -10.0], 0)


def test_larger_advantages_are_clamped_and_counted():
    assert clamped([1e37, -1e37, 10.5, 3.0, math.inf, -math.inf], 10.0) == (
        [10.0, -10.0, 10.0, 3.0, 10.0, -10.0], 5,
    )
    assert clamped([0.5, -0.25, 0.1], 0.2) == ([0.2, -0.2, 0.1], 2)


def test_nan_stays_nan_and_is_not_counted():
    out, changed = clamped([NAN, 20.0], 10.0)
    same(out, [NAN, 10.0])
    assert changed == 1


@pytest.mark.parametrize("bound", [0.0, -1.0, math.inf, NAN])
def test_the_bound_must_be_a_positive_number(bound):
    with pytest.raises(ValueError, match="bound"):
        clamped([1.0], bound)


def test_the_default_bound_leaves_honest_groups_alone():
    """A group of 8 rewards in [0, 1], one right: the largest std-scaled advantage is 7/sqrt(8) ~ 2.47."""
    from fedgrpo.services.orchestrator.advantages import group_advantages

    advantages = group_advantages([1.0] + [0.0] * 7, scale_rewards=True, epsilon=0.0)
    assert advantages[0] == pytest.approx(7 / math.sqrt(8))
    assert clamped(advantages, DEFAULT_MAX_ADVANTAGE)[1] == 0
