"""The online confidence update of one run (pure).

Contract
--------
After each step, every expert of a consensus-read question is measured
against the *other* experts of that question: ``leave_one_out_agreements``
gives, per expert, the fraction of candidates on which its right/wrong call
(reward at or above ``threshold``) matches that of the weighted consensus of
the remaining experts. Leaving the expert's own vote out matters: measured
against a consensus that includes it, the heavier of two experts always
agrees with itself, so a wrong top expert would never be demoted. A question
with a single expert has nobody to compare with and measures nothing (None).

With exactly two experts the measure is symmetric (each is compared with the
other), so one question cannot say which of the two is wrong; the clients
that disagree with *everyone* they are paired with fall furthest over steps,
while two agreeing experts climb back.

``RunConfidence`` holds one run's values and applies both.

``updated_confidence(confidence, agreements, rate)`` returns the run's new
confidence per client: each measured client moves ``rate`` of the way from
its confidence (1.0, as probed, if the run has none yet) towards its mean
agreement over the step (``competence.online_update``); others keep theirs.

The state is the run's, not the federation's: the caller keeps it with the
run (step metrics ``confidence_by_client``, stored with each step) and never
writes it into the probed graph, so one run's updates cannot steer the
routing of the next; ``start_confidence`` gives a new run the probed values
and a resumed run its own last ones.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Collection, Mapping, Sequence

from .advantages import consensus_rewards
from .competence import online_update

PROBED_CONFIDENCE = 1.0


def agreement(row: Sequence[float], accepted: Sequence[float], threshold: float) -> float | None:
    """How far one expert's rewards agree with the accepted ones: the fraction of candidates
    both scored on the same side of ``threshold`` (right vs wrong). None when no candidate
    has both rewards valid.
    """
    if len(row) != len(accepted):
        raise ValueError(f"row has {len(row)} rewards for {len(accepted)} accepted ones")
    pairs = [(r, a) for r, a in zip(row, accepted) if math.isfinite(r) and math.isfinite(a)]
    if not pairs:
        return None
    return sum((r >= threshold) == (a >= threshold) for r, a in pairs) / len(pairs)


def leave_one_out_agreements(
    rows: Sequence[Sequence[float]], weights: Sequence[float] | None, threshold: float
) -> list[float | None]:
    """Per expert k of one question: ``agreement`` of ``rows[k]`` with the consensus of the other rows.

    ``rows[k][i]`` is expert k's reward for candidate i (NaN = missing);
    ``weights[k]`` its consensus weight (uniform when None). None where
    nothing can be measured: a lone expert, or no candidate that both the
    expert and some other expert scored.
    """
    if weights is not None and len(weights) != len(rows):
        raise ValueError(f"weights must have one entry per expert row ({len(rows)}), got {len(weights)}")
    if len(rows) < 2:
        return [None] * len(rows)
    result: list[float | None] = []
    for k, row in enumerate(rows):
        others = [r for j, r in enumerate(rows) if j != k]
        other_weights = None if weights is None else [w for j, w in enumerate(weights) if j != k]
        result.append(agreement(row, consensus_rewards(others, other_weights), threshold))
    return result


def step_agreements(
    experts: Sequence[Sequence[str]],
    rows: Sequence[Sequence[Sequence[float]]],
    weights: Sequence[Sequence[float] | None],
    threshold: float,
) -> dict[str, list[float]]:
    """Every expert's leave-one-out agreements over a step's questions (``experts[q][k]`` scored ``rows[q][k]``)."""
    result: dict[str, list[float]] = {}
    for names, question_rows, question_weights in zip(experts, rows, weights, strict=True):
        agreements = leave_one_out_agreements(question_rows, question_weights, threshold)
        for name, value in zip(names, agreements, strict=True):
            if value is not None:
                result.setdefault(name, []).append(value)
    return result


def start_confidence(probed: Mapping[str, float], saved: Mapping[str, float] | None = None) -> dict[str, float]:
    """Where a run's confidence starts: the probed graph's, overlaid by the run's own ``saved`` values
    (its last completed step's ``confidence_by_client``, when it resumes after a restart)."""
    return {**probed, **(saved or {})}


def updated_confidence(
    confidence: Mapping[str, float], agreements: Mapping[str, Sequence[float]], rate: float
) -> dict[str, float]:
    """The run's confidence after a step: each client with agreements moves towards their mean by ``rate``."""
    result = dict(confidence)
    for name, values in agreements.items():
        if values:
            result[name] = online_update(result.get(name, PROBED_CONFIDENCE), statistics.fmean(values), rate)
    return result


class RunConfidence:
    """One run's online confidence per client, as ``start_confidence`` starts it and ``update`` moves it."""

    def __init__(self, probed: Mapping[str, float] | None = None, saved: Mapping[str, float] | None = None) -> None:
        self.values = start_confidence(probed or {}, saved)

    def update(
        self, experts: Sequence[Sequence[str]], rows: Sequence[Sequence[Sequence[float]]],
        weights: Sequence[Sequence[float] | None], threshold: float, rate: float,
    ) -> str:
        """Apply one step's leave-one-out agreements (``step_agreements``); returns what moved, for the log."""
        agreements = step_agreements(experts, rows, weights, threshold)
        self.values = updated_confidence(self.values, agreements, rate)
        return ", ".join(
            f"{name} {self.values[name]:.3f} (agreed {statistics.fmean(a):.2f})"
            for name, a in sorted(agreements.items())
        )

    def of(self, names: Collection[str] = ()) -> dict[str, float]:
        """The confidence of the named clients it knows (all when ``names`` is empty)."""
        return {n: c for n, c in self.values.items() if not names or n in names}
