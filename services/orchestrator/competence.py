"""Competence math of expert selection, pure and tested by hand (DESIGN.md section 1).

``cosine_similarities`` / ``nearest_items`` find a question's nearest
auxiliary items; ``judging_accuracy`` scores how well a client judged one
probed item; ``competence`` averages that over the neighbours (never-probed
items count 0; items whose probe failed in transport are unknown and left out); ``select_top_m`` picks the experts
(ties: exact judges first, then by name); ``online_update`` moves a client's confidence towards how
well its rewards agreed with the accepted ones. ``ConfidenceGraph`` in
``confidence_graph.py`` holds the state these functions work on.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence

import numpy as np

# Similarities equal up to this many decimals rank as ties (then lower index wins).
# Without it, an item and a scaled copy of it (same direction) can differ by one
# ulp and the tie-break rule would silently depend on float rounding.
TIE_DECIMALS = 12


# -- pure functions -------------------------------------------------------------


def cosine_similarities(query: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Cosine similarity of ``query`` [d] with each row of ``items`` [n, d] -> [n].

    A zero vector (query or item) has similarity 0 with everything: it carries
    no direction, and 0 keeps NaN out of every later mean.
    """
    query = np.asarray(query, dtype=np.float64)
    items = np.asarray(items, dtype=np.float64)
    if query.ndim != 1:
        raise ValueError(f"query must be a 1-d vector [d], got shape {query.shape}")
    if items.ndim != 2 or items.shape[1] != query.shape[0]:
        raise ValueError(
            f"items must be a matrix [n, {query.shape[0]}] (query has d={query.shape[0]}), got shape {items.shape}"
        )
    if not np.all(np.isfinite(query)):
        raise ValueError(f"query must be finite, got {query.tolist()}")
    if not np.all(np.isfinite(items)):
        bad_rows = np.flatnonzero(~np.isfinite(items).all(axis=1)).tolist()
        raise ValueError(f"items must be finite, got non-finite values in rows {bad_rows}")
    norms = np.linalg.norm(items, axis=1) * np.linalg.norm(query)
    dots = items @ query
    similarities = np.zeros(items.shape[0], dtype=np.float64)
    nonzero = norms > 0
    similarities[nonzero] = dots[nonzero] / norms[nonzero]
    # Rounding can push |cos| a hair past 1.
    return np.clip(similarities, -1.0, 1.0)


def nearest_items(query: np.ndarray, items: np.ndarray, k: int) -> list[int]:
    """Indices of the ``k`` rows of ``items`` most similar to ``query``, most similar first.

    Ties (equal up to ``TIE_DECIMALS`` decimals) go to the lower index;
    ``k`` larger than the number of items returns all of them.
    """
    require_int("k", k, minimum=0)
    ranked = np.round(cosine_similarities(query, items), TIE_DECIMALS)
    # A stable sort keeps equal keys in index order: the lower index wins a tie.
    order = np.argsort(-ranked, kind="stable")
    return [int(i) for i in order[:k]]


def judging_accuracy(judged: Sequence[float], truth: Sequence[bool], threshold: float) -> float | None:
    """Fraction of candidates a client judged right: ``(judged[i] >= threshold) == truth[i]``.

    Returns None when the judgement is unusable (length mismatch, no
    candidates, a non-number, NaN or inf), so the caller can mark the client
    incompetent on this item and log why. Range checks against the reward
    bounds belong to the caller (``ConfidenceGraph.record_probe``).
    """
    threshold = require_finite("threshold", threshold)
    if len(judged) != len(truth) or len(judged) == 0:
        return None
    values = []
    for reward in judged:
        try:
            value = float(reward)
        except (TypeError, ValueError):
            return None
        if not math.isfinite(value):
            return None
        values.append(value)
    right = sum((value >= threshold) == bool(correct) for value, correct in zip(values, truth))
    return right / len(values)


def competence(
    item_accuracy: Mapping[str, float],
    neighbours: Sequence[str],
    weights: Sequence[float] | None = None,
    unknown: Collection[str] = (),
) -> float:
    """A client's mean judging accuracy over a question's ``neighbours`` (auxiliary item ids).

    An item in ``unknown`` (its probe failed in transport: timeout,
    unreachable) says nothing about the client and is left out of the mean;
    an item missing from ``item_accuracy`` otherwise (never probed) counts 0:
    unprobed is not competent. With ``weights`` (one per neighbour, finite,
    >= 0; usually the similarities) the mean is weighted; if they are all 0 it
    falls back to the plain mean. No neighbours, or only unknown ones -> 0.
    """
    if weights is not None:
        if len(weights) != len(neighbours):
            raise ValueError(f"weights must have one entry per neighbour ({len(neighbours)}), got {len(weights)}")
        for i, weight in enumerate(weights):
            if not math.isfinite(weight) or weight < 0:
                raise ValueError(f"weights[{i}] must be a finite number >= 0, got {weight!r}")
    if unknown:
        kept = [i for i, item_id in enumerate(neighbours) if item_id not in unknown]
        neighbours = [neighbours[i] for i in kept]
        weights = None if weights is None else [weights[i] for i in kept]
    if not neighbours:
        return 0.0
    accuracies = [float(item_accuracy.get(item_id, 0.0)) for item_id in neighbours]
    if weights is None:
        return math.fsum(accuracies) / len(accuracies)
    total = math.fsum(weights)
    if total == 0:
        return math.fsum(accuracies) / len(accuracies)
    return math.fsum(w * a for w, a in zip(weights, accuracies)) / total


def select_top_m(
    competences: Mapping[str, float], m: int, live: Collection[str], exactness: Mapping[str, int] | None = None
) -> list[str]:
    """The ``m`` most competent clients among ``live``, most competent first.

    Ties (competences equal up to ``TIE_DECIMALS`` decimals) go to the more
    exact judge (lower ``exactness[name]``: answer-based 0, model-based 1,
    see ``experts.exactness``; a client missing from it ranks last), then to
    the name, so the choice is deterministic. Clients not in ``live`` are
    never chosen; a live client missing from ``competences`` counts 0. Fewer
    than ``m`` live clients -> all of them.
    """
    require_int("m", m, minimum=0)
    for name, value in competences.items():
        if not math.isfinite(value):
            raise ValueError(f"competences[{name!r}] must be finite, got {value!r}")
    exactness = exactness or {}
    last = max(exactness.values(), default=0) + 1
    ranked = sorted(
        set(live),
        key=lambda name: (-round(float(competences.get(name, 0.0)), TIE_DECIMALS), exactness.get(name, last), name),
    )
    return ranked[:m]


def online_update(confidence: float, agreement: float, rate: float) -> float:
    """Move ``confidence`` towards ``agreement`` by ``rate``: ``(1 - rate) * confidence + rate * agreement``.

    ``agreement`` (how well the client's rewards agreed with the accepted ones)
    is expected in [0, 1]; ``rate`` must be in [0, 1]. The result is clipped to
    [0, 1], so a slightly out-of-range agreement saturates instead of pushing
    the confidence out of range.
    """
    confidence = require_finite("confidence", confidence)
    agreement = require_finite("agreement", agreement)
    rate = require_finite("rate", rate)
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must be in [0, 1], got {rate!r}")
    updated = (1.0 - rate) * confidence + rate * agreement
    return min(1.0, max(0.0, updated))


# -- the graph ------------------------------------------------------------------


def require_finite(field: str, value: float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{field} must be a finite number, got {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"{field} must be a finite number, got {value!r}")
    return number


def require_int(field: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{field} must be an integer >= {minimum}, got {value!r}")
