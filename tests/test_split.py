"""The Dirichlet split of domains over clients."""

import pytest

from fedgrpo.job.split import dirichlet_split

DOMAINS = ["add1", "sub1", "mul1", "add2", "chain3"]


def test_every_domain_has_a_holder_and_shares_sum_to_one():
    split = dirichlet_split(DOMAINS, clients=5, alpha=0.1, seed=3)
    held = {d for h in split.holdings for d in h}
    assert held == set(DOMAINS)
    for d in range(len(DOMAINS)):
        assert sum(split.shares[k][d] for k in range(5)) == pytest.approx(1.0, abs=1e-5)


def test_deterministic_for_a_seed():
    assert dirichlet_split(DOMAINS, 5, 0.1, seed=1) == dirichlet_split(DOMAINS, 5, 0.1, seed=1)
    first = dirichlet_split(DOMAINS, 5, 0.1, seed=1)
    assert any(dirichlet_split(DOMAINS, 5, 0.1, seed=s) != first for s in range(2, 6))


def test_small_alpha_concentrates_large_alpha_spreads():
    def mean_holders(alpha):
        counts = [
            sum(d in h for h in dirichlet_split(DOMAINS, 5, alpha, seed=s).holdings)
            for s in range(20) for d in DOMAINS
        ]
        return sum(counts) / len(counts)

    assert mean_holders(0.1) < 1.6  # about one holder per domain
    assert mean_holders(100.0) == 5.0  # every share ~0.2 >= 0.1: everyone holds everything


def test_bad_arguments_name_the_field():
    for kwargs, field in [({"clients": 0}, "clients"), ({"alpha": 0.0}, "alpha"), ({"min_share": 0.0}, "min_share")]:
        with pytest.raises(ValueError, match=field):
            dirichlet_split(DOMAINS, **{"clients": 3, **kwargs})
    with pytest.raises(ValueError, match="domains"):
        dirichlet_split([], 3)
