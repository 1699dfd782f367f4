"""Paired comparison of two methods on the same held-out questions and seeds.

Every method of the experiment is evaluated on the same questions after a
run with the same seed, so methods are compared pairwise: ``d[s, q]`` is
method A's correctness (1/0) on question q after its seed-s run minus method
B's. A method evaluated once (zero-shot: greedy decoding of a fixed policy)
is paired with every seed of the other.

``bootstrap_interval(d, strata)`` gives the mean paired difference and a
percentile bootstrap interval over seeds *and* questions: each of
``resamples`` draws takes S seeds with replacement and, within each stratum
(domain), as many questions as it has, with replacement; the statistic is the
mean of ``d`` over the drawn seeds x questions. The generator is seeded
(``rng_seed``), so a report is reproducible. With few seeds (3) the seed
resampling is coarse: the interval reflects the seeds we have, not more.

``verdict(kind, low, high)`` reads an interval: ``beats`` holds only when the
interval lies above 0 (does not hold when below 0); ``within`` holds only when
the whole interval lies inside +-margin (does not hold when it lies wholly
outside); anything else is ``inconclusive``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

RESAMPLES = 10_000
LEVEL = 0.95
RNG_SEED = 0
MARGIN = 0.03  # "within 3 points"


ONE_EVALUATION = -1  # the seed a method evaluated once, untrained (zero-shot), is recorded under


def paired_differences(a: Mapping[int, Sequence[int]], b: Mapping[int, Sequence[int]]) -> np.ndarray:
    """d[s, q] = a[s][q] - b[s][q] over the seeds both have; a one-evaluation side (seed ``ONE_EVALUATION``:
    zero-shot, trained by no seed) pairs with every seed. A trained method run at one seed pairs with that
    seed only: pairing it with other seeds would count its one run as if it had been run at each.

    ``a`` and ``b`` map seed -> correctness per question, the questions in the same order."""
    if not a or not b:
        raise ValueError("paired_differences: each method needs at least one evaluation")
    if set(a) == {ONE_EVALUATION} and set(b) == {ONE_EVALUATION}:
        a, b = {0: a[ONE_EVALUATION]}, {0: b[ONE_EVALUATION]}
    elif set(a) == {ONE_EVALUATION}:
        a = {s: a[ONE_EVALUATION] for s in b}
    elif set(b) == {ONE_EVALUATION}:
        b = {s: b[ONE_EVALUATION] for s in a}
    seeds = sorted(a.keys() & b.keys())
    if not seeds:
        raise ValueError(f"paired_differences: no common seed ({sorted(a)} vs {sorted(b)})")
    rows = []
    for s in seeds:
        if len(a[s]) != len(b[s]):
            raise ValueError(f"paired_differences: seed {s} has {len(a[s])} vs {len(b[s])} questions; "
                             "expected the same held-out questions")
        rows.append(np.asarray(a[s], float) - np.asarray(b[s], float))
    return np.stack(rows)


def bootstrap_interval(
    d: np.ndarray, strata: Sequence[str] | None = None, resamples: int = RESAMPLES, level: float = LEVEL,
    rng_seed: int = RNG_SEED,
) -> tuple[float, float, float]:
    """(mean, low, high): the mean paired difference and its percentile bootstrap interval."""
    d = np.atleast_2d(np.asarray(d, float))
    n_seeds, n_questions = d.shape
    if n_questions == 0:
        raise ValueError("bootstrap_interval: no questions")
    strata = np.asarray(strata if strata is not None else ["all"] * n_questions)
    if strata.shape != (n_questions,):
        raise ValueError(f"strata: got {strata.shape[0]} labels for {n_questions} questions")
    rng = np.random.default_rng(rng_seed)
    seed_weights = rng.multinomial(n_seeds, [1 / n_seeds] * n_seeds, size=resamples) / n_seeds
    question_weights = np.zeros((resamples, n_questions))
    for label in dict.fromkeys(strata.tolist()):  # first-seen order: reproducible draws
        idx = np.flatnonzero(strata == label)
        counts = rng.multinomial(len(idx), [1 / len(idx)] * len(idx), size=resamples)
        question_weights[:, idx] = counts / n_questions
    stats = np.einsum("bq,bq->b", seed_weights @ d, question_weights)
    tail = (1 - level) / 2
    low, high = np.quantile(stats, [tail, 1 - tail])
    return float(d.mean()), float(low), float(high)


Verdict = Literal["holds", "does not hold", "inconclusive"]


def verdict(kind: Literal["beats", "within"], low: float, high: float, margin: float = MARGIN) -> Verdict:
    if kind == "beats":
        return "holds" if low > 0 else "does not hold" if high < 0 else "inconclusive"
    if kind == "within":
        if -margin <= low and high <= margin:
            return "holds"
        return "does not hold" if low > margin or high < -margin else "inconclusive"
    raise ValueError(f"kind: got {kind!r}, expected beats or within")


@dataclass(frozen=True)
class Comparison:
    difference: float
    low: float
    high: float
    verdict: Verdict
    seeds: int
    questions: int


def compare(
    a: Mapping[int, Sequence[int]], b: Mapping[int, Sequence[int]], strata: Sequence[str],
    kind: Literal["beats", "within"],
) -> Comparison:
    d = paired_differences(a, b)
    mean, low, high = bootstrap_interval(d, strata)
    return Comparison(mean, low, high, verdict(kind, low, high), d.shape[0], d.shape[1])
