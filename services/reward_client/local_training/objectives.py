"""The objectives a locally training client scores each candidate on (pure Python).

Contract
--------
``score_objectives(reply, correctness, completion_tokens, max_tokens)``
returns one score in [0, 1] per objective of ``OBJECTIVES``, in that order:

- ``correctness`` (the primary objective): the client's own evaluator's reward
  (its labels and checker, or its reward model), rescaled from
  ``[reward_min, reward_max]`` to [0, 1]; NaN when the evaluator gave none.
- ``format``: 1 when the whole reply is one line that is its answer (what the
  built-in instruction "Answer with just the number." asks), 0.5 when a longer
  reply marks its final answer (``\\boxed{...}``, "answer is ..."), 0 otherwise
  (an empty reply, or an answer a reader has to guess).
- ``brevity``: ``1 - completion_tokens / max_tokens`` (0 at the length limit).

The weighted sum of these scores is the client's reward
(``objective_weights.weighted_reward``); correctness alone is what its
weights are adapted to improve.
"""

from __future__ import annotations

import math

from fedgrpo.data.checkers import states_answer
from fedgrpo.fedmoa_objectives import OBJECTIVES, PRIMARY

__all__ = ["OBJECTIVES", "PRIMARY", "format_score", "score_objectives"]


def format_score(reply: str) -> float:
    lines = [line for line in reply.strip().splitlines() if line.strip()]
    if len(lines) == 1 and len(lines[0]) <= 64 and not states_answer(reply):
        return 1.0
    if states_answer(reply):
        return 0.5
    return 0.0


def brevity_score(completion_tokens: int, max_tokens: int) -> float:
    if max_tokens <= 0:
        raise ValueError(f"max_tokens: must be > 0, got {max_tokens}")
    return max(0.0, 1.0 - completion_tokens / max_tokens)


def correctness_score(reward: float, reward_min: float, reward_max: float) -> float:
    if not math.isfinite(reward) or reward_max <= reward_min:
        return float("nan")
    return min(1.0, max(0.0, (reward - reward_min) / (reward_max - reward_min)))


def score_objectives(
    reply: str, reward: float, completion_tokens: int, max_tokens: int,
    reward_min: float = 0.0, reward_max: float = 1.0,
) -> list[float]:
    """One score per objective of ``OBJECTIVES`` for one candidate (module docstring)."""
    return [
        correctness_score(reward, reward_min, reward_max),
        format_score(reply),
        brevity_score(completion_tokens, max_tokens),
    ]
