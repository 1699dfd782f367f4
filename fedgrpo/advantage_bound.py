"""The bound on advantages that the orchestrator and the trainer both enforce (pure).

``clamped(advantages, bound)`` returns the advantages with every finite value
clamped into ``[-bound, bound]`` (an infinite one to the sign's end) and how
many it changed; NaN stays NaN (a missing reward, excluded by the caller).

Why a bound at all: with rewards on the federation's scale [0, 1], an
advantage of a group of n rewards is at most 1 unscaled and (n - 1) / sqrt(n)
divided by the sample std (a single outlier), so the default 10 is never
reached by groups of up to 100 candidates. A larger value means something
upstream broke (a client's range not normalised, a bug): one such sequence
would otherwise dominate the whole batch's gradient. Clamping, not refusing,
keeps a run going; the count says it happened (``StepMetrics`` and
``TrainMetrics.advantages_clamped``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

DEFAULT_MAX_ADVANTAGE = 10.0


def clamped(advantages: Iterable[float], bound: float) -> tuple[list[float], int]:
    """``advantages`` clamped to ``[-bound, bound]`` (NaN kept), and the number of values changed."""
    if not (math.isfinite(bound) and bound > 0):
        raise ValueError(f"bound: got {bound!r}, expected a finite number > 0")
    out, changed = [], 0
    for a in advantages:
        if math.isnan(a) or -bound <= a <= bound:
            out.append(a)
        else:
            out.append(math.copysign(bound, a))
            changed += 1
    return out, changed
