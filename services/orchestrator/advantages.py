"""Rewards from several expert reward clients -> group-relative advantages (pure Python).

Contract
--------
A missing or invalid reward travels as NaN and is EXCLUDED from every mean and
standard deviation here; it is never counted as 0. Any non-finite value
(NaN, +-inf) is treated as missing, since an infinite reward would poison the
whole group's statistics. Excluded candidates keep a NaN advantage, so the
caller can drop them from the policy batch.

- ``consensus_rewards``: per candidate, the weighted mean of the experts that
  scored it (weights renormalised over those experts).
- ``group_advantages``: GRPO's ``A_i = (r_i - mean) / (std + epsilon)`` over the
  valid rewards of one group (the std division is optional).
- ``pooled_advantages``: the pooled reading of FedGRPO's released code: M
  experts each score their own block of G candidates; the statistics run over
  the pooled M x G block and the result keeps the block shape.
- ``group_has_signal``: whether a group can produce any gradient at all.

Standard deviation convention: the sample std (n - 1 denominator), as TRL's
``GRPOTrainer`` computes ``rewards.view(-1, G).std(dim=1)`` with torch's
default unbiased estimator, so advantages here match TRL's for the same group.
With one valid reward the sample std is undefined; the lone advantage is then
its mean-centred value, 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

NAN = float("nan")


def valid_reward(x: float, low: float, high: float) -> bool:
    """True if ``x`` is a finite number within [low, high]."""
    try:
        value = float(x)
    except (TypeError, ValueError):
        return False
    return math.isfinite(value) and low <= value <= high


def consensus_rewards(
    expert_rewards: Sequence[Sequence[float]],
    weights: Sequence[float] | None = None,
) -> list[float]:
    """Combine ``expert_rewards[k][i]`` (expert k, candidate i; NaN = missing) into one reward per candidate.

    Each candidate gets the weighted mean over the experts that gave it a valid
    reward, weights renormalised over those experts (uniform by default), or
    NaN if none did. If the weights of those experts are all 0, they fall back
    to uniform: an unweighted valid opinion beats no reward at all.
    """
    if not expert_rewards:
        return []
    n_candidates = len(expert_rewards[0])
    for k, row in enumerate(expert_rewards):
        if len(row) != n_candidates:
            raise ValueError(
                f"expert_rewards is ragged: expert 0 scored {n_candidates} candidates, expert {k} scored {len(row)}"
            )
    if weights is None:
        weights = [1.0] * len(expert_rewards)
    if len(weights) != len(expert_rewards):
        raise ValueError(f"weights must have one entry per expert ({len(expert_rewards)}), got {len(weights)}")
    for k, w in enumerate(weights):
        if not math.isfinite(w) or w < 0:
            raise ValueError(f"weights[{k}] must be a finite number >= 0, got {w!r}")

    combined = []
    for i in range(n_candidates):
        scored = [(w, row[i]) for w, row in zip(weights, expert_rewards) if math.isfinite(row[i])]
        if not scored:
            combined.append(NAN)
            continue
        total_weight = math.fsum(w for w, _ in scored)
        if total_weight == 0:
            combined.append(_mean([r for _, r in scored]))
        else:
            combined.append(math.fsum(w * r for w, r in scored) / total_weight)
    return combined


def group_advantages(rewards: Sequence[float], scale_rewards: bool = True, epsilon: float = 1e-4) -> list[float]:
    """Group-relative advantages of one group: ``r_i - mean``, divided by ``std + epsilon`` if ``scale_rewards``.

    Statistics use only the valid (finite) rewards; NaN stays NaN. One valid
    reward -> advantage 0; no valid reward -> all NaN; all-equal valid rewards
    -> exact zeros.
    """
    _check_epsilon(epsilon)
    return _relative(list(rewards), scale_rewards, epsilon)


def pooled_advantages(
    blocks: Sequence[Sequence[float]],
    scale_rewards: bool = False,
    epsilon: float = 1e-4,
) -> list[list[float]]:
    """Advantages over the pooled M x G block (``blocks[j]`` = expert j's G candidates), same shape out.

    Mean-centred over all valid entries of all blocks; NaN stays NaN. Std
    scaling is optional and off by default, as in FedGRPO's released code; a
    run's spec leaves it off for the pooled reading unless ``scale_rewards``
    is set (``RunConfig.scale``).
    """
    _check_epsilon(epsilon)
    if not blocks:
        return []
    size = len(blocks[0])
    for j, block in enumerate(blocks):
        if len(block) != size:
            raise ValueError(f"blocks must all hold G={size} candidates, block {j} holds {len(block)}")
    flat = _relative([r for block in blocks for r in block], scale_rewards, epsilon)
    return [flat[j * size:(j + 1) * size] for j in range(len(blocks))]


def group_has_signal(advantages: Sequence[float]) -> bool:
    """True if any advantage is valid and non-zero; otherwise the group yields no gradient."""
    return any(math.isfinite(a) and a != 0 for a in advantages)


def _relative(rewards: list[float], scale_rewards: bool, epsilon: float) -> list[float]:
    """Mean-centre (and optionally std-scale) the finite entries of ``rewards``; others become NaN."""
    valid = [r for r in rewards if math.isfinite(r)]
    if not valid:
        return [NAN] * len(rewards)
    if all(r == valid[0] for r in valid):
        # No spread, no signal: exact zeros rather than the rounding noise of r - mean.
        return [0.0 if math.isfinite(r) else NAN for r in rewards]
    mean = _mean(valid)
    scale = _sample_std(valid, mean) + epsilon if scale_rewards else 1.0
    return [(r - mean) / scale if math.isfinite(r) else NAN for r in rewards]


def _mean(values: list[float]) -> float:
    return math.fsum(values) / len(values)


def _sample_std(values: list[float], mean: float) -> float:
    """Sample std (n - 1), TRL's convention; 0 for a single value, where it is undefined."""
    if len(values) < 2:
        return 0.0
    return math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _check_epsilon(epsilon: float) -> None:
    if not math.isfinite(epsilon) or epsilon < 0:
        raise ValueError(f"epsilon must be a finite number >= 0, got {epsilon!r}")


def question_advantages(
    rows: Sequence[Sequence[float]], reading: str, scale_rewards: bool, candidates: int,
    weights: Sequence[float] | None = None,
) -> tuple[list[float], list[float]]:
    """Per-candidate (rewards, advantages) of one question under a reward reading.

    ``consensus``: rows[k] is expert k's reward for every candidate; a
    candidate's reward is the experts' mean, weighted by ``weights`` (one per
    row, e.g. competences; uniform when None), and advantages are relative to
    the question's candidates. ``pooled``: rows[j] scores block j of the
    candidates (block size ``candidates / len(rows)``); advantages are
    relative to the pooled block. Both are flattened in candidate order; with
    no expert rows at all every candidate is excluded (NaN).
    """
    if not rows:
        return [math.nan] * candidates, [math.nan] * candidates
    if reading == "consensus":
        rewards = consensus_rewards(rows, weights)
        return rewards, group_advantages(rewards, scale_rewards=scale_rewards)
    if reading == "pooled":
        if sum(len(r) for r in rows) != candidates:
            raise ValueError(f"rows: {sum(len(r) for r in rows)} rewards for {candidates} candidates")
        blocks = pooled_advantages(rows, scale_rewards=scale_rewards)
        return [r for row in rows for r in row], [a for block in blocks for a in block]
    raise ValueError(f"reading: got {reading!r}, expected consensus or pooled")
