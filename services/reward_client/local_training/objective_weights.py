"""FedMOA's adaptive objective weights: one hypergradient step per local GRPO step (pure Python).

Contract
--------
A client's reward for candidate ``i`` is ``r_i = sum_k w_k s_ik`` over its
objectives ``k`` (correctness, format, brevity, ...: ``objectives.py``), with
the weights ``w`` on the simplex, parametrised by logits ``lam`` as
``w = (1 - K m) softmax(lam) + m`` (``m = min_weight``: no objective ever
drops out entirely). FedMOA adapts ``w`` online so that the *primary*
objective (correctness) is what the policy improves; this module is our
reading of that rule, written out so it can be checked by hand (the paper's
method section gives the idea, not code):

1. Per objective, group-relative advantages ``a_ik`` of its scores over each
   group of G candidates (GRPO's ``(s - mean) / (std + eps)``, sample std):
   ``objective_advantages``. An objective every candidate of a group meets
   equally (saturated) gives that group all-zero advantages.
2. The GRPO step moves the parameters by ``eta * sum_k w_k g_k``, with
   ``g_k = (1/N) sum_i a_ik grad log pi(y_i)`` the policy gradient of objective
   ``k``. To first order the primary objective ``p`` after the step is
   ``J_p + eta * sum_k w_k <g_p, g_k>``, so its hypergradient is
   ``dJ_p/dw_k = eta <g_p, g_k>``. Taking the score-function gradients of
   distinct samples as orthonormal (no extra backward pass; the usual cheap
   surrogate), ``<g_p, g_k>`` is proportional to
   ``h_k = (1/N) sum_i a_ip a_ik``: ``hypergradient``. So ``h_p > 0`` while
   correctness still varies within groups, a saturated objective has
   ``h_k = 0``, and one that conflicts with correctness has ``h_k < 0``.
3. Gradient *ascent* on ``J_p`` through the softmax:
   ``dJ/dlam_j = (1 - K m) w'_j (h_j - sum_k w'_k h_k)`` with
   ``w' = softmax(lam)``, and ``lam <- lam + learning_rate * dJ/dlam``:
   ``update_weights``. Objectives that help correctness more than the current
   mix does gain weight; saturated and conflicting ones lose it; all weights
   stay >= ``min_weight`` and sum to 1.

Non-finite scores are missing: they are left out of their group's statistics
and their advantage counts as 0 in ``h``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class ObjectiveWeights:
    """The objectives' weights (what the reward uses) and the logits they come from (what the update moves)."""

    names: tuple[str, ...]
    logits: tuple[float, ...]
    min_weight: float

    @classmethod
    def initial(cls, names: Sequence[str], weights: Sequence[float], min_weight: float = 0.05) -> ObjectiveWeights:
        """Weights starting at ``weights`` (normalised to sum 1; each must be >= ``min_weight`` after that)."""
        names = tuple(names)
        if not names or len(set(names)) != len(names):
            raise ValueError(f"objectives: need distinct names, got {list(names)}")
        if len(weights) != len(names):
            raise ValueError(f"weights: need one per objective ({len(names)}), got {len(weights)}")
        if not 0 <= min_weight < 1 / len(names):
            raise ValueError(f"min_weight: must be in [0, 1/{len(names)}), got {min_weight}")
        if any(not math.isfinite(w) or w <= 0 for w in weights):
            raise ValueError(f"weights: each must be a finite number > 0, got {list(weights)}")
        total = math.fsum(weights)
        target = [w / total for w in weights]
        span = 1 - len(names) * min_weight
        free = [(w - min_weight) / span for w in target]
        if any(f <= 0 for f in free):
            raise ValueError(f"weights: each must be > min_weight {min_weight} once normalised, got {target}")
        return cls(names, tuple(math.log(f) for f in free), min_weight)

    @property
    def weights(self) -> tuple[float, ...]:
        span = 1 - len(self.names) * self.min_weight
        return tuple(span * s + self.min_weight for s in softmax(self.logits))

    def as_dict(self) -> dict[str, float]:
        return dict(zip(self.names, self.weights))


def softmax(logits: Sequence[float]) -> list[float]:
    top = max(logits)
    exps = [math.exp(x - top) for x in logits]
    total = math.fsum(exps)
    return [e / total for e in exps]


def weighted_reward(scores: Sequence[float], weights: Sequence[float]) -> float:
    """``sum_k w_k s_k``; NaN when any score is missing (the candidate then gets no reward)."""
    if len(scores) != len(weights):
        raise ValueError(f"scores: need one per objective ({len(weights)}), got {len(scores)}")
    if any(not math.isfinite(s) for s in scores):
        return float("nan")
    return math.fsum(w * s for w, s in zip(weights, scores))


def objective_advantages(group: Sequence[Sequence[float]], epsilon: float = 1e-4) -> list[list[float]]:
    """``group[i][k]`` (candidate i, objective k) -> per-objective group-relative advantages, same shape.

    Each objective is normalised over the group's candidates with a finite score (sample std, as
    ``services.orchestrator.advantages.group_advantages``); missing scores get advantage 0.
    """
    if not group:
        return []
    width = len(group[0])
    if any(len(row) != width for row in group):
        raise ValueError("group: every candidate needs one score per objective")
    columns = []
    for k in range(width):
        column = [row[k] for row in group]
        valid = [s for s in column if math.isfinite(s)]
        if len(valid) < 2 or max(valid) == min(valid):  # nothing to rank: a saturated objective
            columns.append([0.0] * len(column))
            continue
        mean = math.fsum(valid) / len(valid)
        std = math.sqrt(math.fsum((s - mean) ** 2 for s in valid) / (len(valid) - 1))
        columns.append([(s - mean) / (std + epsilon) if math.isfinite(s) else 0.0 for s in column])
    return [[columns[k][i] for k in range(width)] for i in range(len(group))]


def hypergradient(groups: Sequence[Sequence[Sequence[float]]], primary: int, epsilon: float = 1e-4) -> list[float]:
    """``h_k = (1/N) sum_i a_ip a_ik`` over every candidate of every group (``groups[g][i][k]`` are scores)."""
    rows = [row for group in groups for row in objective_advantages(group, epsilon)]
    if not rows:
        raise ValueError("groups: need at least one scored candidate")
    width = len(rows[0])
    if not 0 <= primary < width:
        raise ValueError(f"primary: must name one of the {width} objectives, got {primary}")
    return [math.fsum(row[primary] * row[k] for row in rows) / len(rows) for k in range(width)]


def update_weights(current: ObjectiveWeights, h: Sequence[float], learning_rate: float) -> ObjectiveWeights:
    """One ascent step on the primary objective's hypergradient ``h`` (module docstring, step 3)."""
    if len(h) != len(current.names):
        raise ValueError(f"h: need one entry per objective ({len(current.names)}), got {len(h)}")
    if not math.isfinite(learning_rate) or learning_rate < 0:
        raise ValueError(f"learning_rate: must be a finite number >= 0, got {learning_rate}")
    free = softmax(current.logits)
    span = 1 - len(free) * current.min_weight
    mixed = math.fsum(w * x for w, x in zip(free, h))
    step = [span * w * (x - mixed) for w, x in zip(free, h)]
    logits = tuple(lam + learning_rate * g for lam, g in zip(current.logits, step))
    top = max(logits)  # keep the logits bounded: softmax ignores a shift
    return ObjectiveWeights(current.names, tuple(x - top for x in logits), current.min_weight)
