"""The paired bootstrap on hand-made data: a clear win, a tie, noise, coverage, and the verdict rules."""

import numpy as np
import pytest

from fedgrpo.job.paired import bootstrap_interval, compare, paired_differences, verdict

SEEDS = (0, 1, 2)


def answers(rate, n, offset=0):
    right = round(rate * n)
    return [int((i - offset) % n < right) for i in range(n)]


def test_a_clear_win_is_called_a_win():
    a = {s: answers(0.8, 200) for s in SEEDS}
    b = {s: answers(0.3, 200) for s in SEEDS}
    c = compare(a, b, ["x"] * 200, "beats")
    assert c.difference == pytest.approx(0.5) and c.low > 0.4 and c.verdict == "holds"
    assert compare(b, a, ["x"] * 200, "beats").verdict == "does not hold"  # the other way round: clearly worse
    assert compare(a, b, ["x"] * 200, "within").verdict == "does not hold"  # 50 points apart


def test_a_clear_tie_is_within_three_points_but_no_win():
    a = {s: answers(0.5, 300) for s in SEEDS}
    c = compare(a, dict(a), ["x"] * 300, "within")
    assert (c.difference, c.low, c.high) == (0.0, 0.0, 0.0) and c.verdict == "holds"
    assert compare(a, dict(a), ["x"] * 300, "beats").verdict == "inconclusive"


def test_noise_is_inconclusive_with_its_interval():
    rng = np.random.default_rng(7)
    a = {s: rng.integers(0, 2, 40).tolist() for s in SEEDS}
    b = {s: rng.integers(0, 2, 40).tolist() for s in SEEDS}
    for kind in ("beats", "within"):
        c = compare(a, b, ["x"] * 40, kind)
        assert c.verdict == "inconclusive" and c.low < 0 < c.high and c.high - c.low > 0.1


def test_one_evaluation_pairs_with_every_seed():
    zero_shot = {-1: [1, 0, 0, 1]}
    trained = {0: [1, 1, 0, 1], 1: [1, 1, 1, 1], 2: [0, 0, 0, 1]}
    d = paired_differences(trained, zero_shot)
    assert d.tolist() == [[0, 1, 0, 0], [0, 1, 1, 0], [-1, 0, 0, 0]]
    with pytest.raises(ValueError, match="same held-out questions"):
        paired_differences({0: [1, 0]}, {0: [1, 0, 1]})
    with pytest.raises(ValueError, match="no common seed"):
        paired_differences({0: [1], 1: [0]}, {2: [1], 3: [0]})
    # A trained method run at one seed is not a one-evaluation method: it pairs with its own seed only.
    assert paired_differences(trained, {0: [0, 0, 0, 0]}).tolist() == [[1, 1, 0, 1]]
    with pytest.raises(ValueError, match="no common seed"):
        paired_differences({1: [1]}, {0: [1]})


def test_interval_by_hand_and_reproducible():
    # one seed, two questions with differences 1 and 0: a resample's mean is 0, 0.5 or 1 with odds 1:2:1
    mean, low, high = bootstrap_interval(np.array([[1.0, 0.0]]))
    assert (mean, low, high) == (0.5, 0.0, 1.0)
    d = np.random.default_rng(3).integers(-1, 2, (3, 50))
    assert bootstrap_interval(d) == bootstrap_interval(d)
    # resampling within strata: a stratum that always differs by 1 and one that never does keep their weight
    mean, low, high = bootstrap_interval(np.array([[1.0] * 10 + [0.0] * 10]), ["a"] * 10 + ["b"] * 10)
    assert (mean, low, high) == (0.5, 0.5, 0.5)


def test_intervals_cover_the_true_difference_about_as_often_as_they_say():
    """200 synthetic experiments, true paired difference 0.1 over the population of questions."""
    rng = np.random.default_rng(11)
    covered = 0
    for _ in range(200):
        p = rng.uniform(0.2, 0.6, 80)  # each question's difficulty for method B
        a = {s: (rng.random(80) < p + 0.1).astype(int).tolist() for s in SEEDS}
        b = {s: (rng.random(80) < p).astype(int).tolist() for s in SEEDS}
        _, low, high = bootstrap_interval(paired_differences(a, b), resamples=1000)
        covered += low <= 0.1 <= high
    assert 0.9 <= covered / 200 <= 1.0


def test_verdict_rules():
    assert verdict("beats", 0.001, 0.2) == "holds"
    assert verdict("beats", -0.001, 0.2) == "inconclusive"
    assert verdict("beats", -0.2, -0.01) == "does not hold"
    assert verdict("within", -0.03, 0.029) == "holds"
    assert verdict("within", -0.031, 0.0) == "inconclusive"
    assert verdict("within", -0.2, -0.04) == "does not hold"
    with pytest.raises(ValueError, match="kind"):
        verdict("ties", 0, 0)
