"""Every client's rewards on the federation's one scale (pure).

Contract
--------
A reward client declares its reward range ``[low, high]`` in Describe or
Join; the federation's range is fixed, ``[REWARD_MIN, REWARD_MAX] = [0, 1]``
(``fedgrpo.tasks``), with "judged correct" at ``CORRECT_THRESHOLD`` (0.5).
``normalised_row(row, low, high)`` maps each reward of one client's row
linearly from its declared range onto the federation's: ``low`` -> 0,
``high`` -> 1. A reward that is not a finite number or lies outside the
declared range becomes NaN (excluded later, never 0) and is counted as
dropped.

Why: a client's declaration is its own claim. Taken at face value, a client
declaring ``[0, 3.4e38]`` outweighs every other expert of a consensus
whatever its weight, and its rewards drive unscaled advantages to ~1e37.
After the map no client spans more than ``[0, 1]``, so what a client
declares cannot buy it weight; everything downstream (advantages, the
correctness threshold, probes, online confidence, the reward ledger) sees
rewards on the federation's scale only. A client declaring ``[0, 1]`` (every
evaluator this project ships) is left exactly as it answered.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from fedgrpo.tasks import CORRECT_THRESHOLD, REWARD_MAX, REWARD_MIN

__all__ = ["CORRECT_THRESHOLD", "REWARD_MAX", "REWARD_MIN", "declared_range_problem", "normalised", "normalised_row"]


def declared_range_problem(low: float, high: float) -> str | None:
    """Why ``[low, high]`` cannot be a declared reward range (not finite, or empty); None if it can."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return f"[{low}, {high}] is not finite"
    if not low < high:
        return f"[{low}, {high}] is empty: reward_min must be below reward_max"
    return None


def normalised(reward: float, low: float, high: float) -> float:
    """``reward`` mapped linearly from ``[low, high]`` onto ``[REWARD_MIN, REWARD_MAX]``; NaN if it is
    not a finite number within ``[low, high]``. Raises ValueError for an unusable range."""
    problem = declared_range_problem(low, high)
    if problem:
        raise ValueError(f"reward range: {problem}")
    if not (math.isfinite(reward) and low <= reward <= high):
        return math.nan
    # Divide the offsets separately: high - low cannot overflow for float32 declarations, and the
    # min/max absorbs the last ulp of rounding so a reward at high maps to exactly REWARD_MAX.
    fraction = (reward - low) / (high - low)
    return REWARD_MIN + (REWARD_MAX - REWARD_MIN) * min(1.0, max(0.0, fraction))


def normalised_row(row: Sequence[float], low: float, high: float) -> tuple[list[float], int]:
    """One client's rewards on the federation's scale, and how many were dropped (NaN out)."""
    out = [normalised(r, low, high) for r in row]
    return out, sum(math.isnan(r) for r in out)
