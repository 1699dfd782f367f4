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

A client may add objectives of its own (``--local-objectives``), scored after
those three, in the order given: ``load_objectives(specs, reward_model)``
returns one :class:`AddedObjective` per spec:

- ``reward_model``: the client's own reward model's score of (question,
  reply), rescaled from its reward range to [0, 1] (needs ``--reward-model``);
- a function, ``module:function`` or an entry point of group
  ``fedgrpo.objectives``, called as ``function(question, reply)``; ``True`` /
  ``False`` mean 1 / 0, a number is clamped into [0, 1], anything else (or an
  exception) is NaN: that candidate gets no reward, as for a missing label.

An added objective is named by its spec's last part (``my_org.style:polite``
-> ``polite``); a name the round already uses, or used twice, is refused.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from fedgrpo.data.checkers import states_answer
from fedgrpo.fedmoa_objectives import OBJECTIVES, PRIMARY
from fedgrpo.plugins import load_function, unit_score

__all__ = ["OBJECTIVES", "PRIMARY", "AddedObjective", "ObjectiveError", "format_score", "load_objectives",
           "score_objectives"]

log = logging.getLogger(__name__)
ENTRY_POINT_GROUP = "fedgrpo.objectives"
REWARD_MODEL = "reward_model"


class ObjectiveError(ValueError):
    """An added objective that cannot be used, with what to fix."""


@dataclass(frozen=True)
class AddedObjective:
    """An objective a client adds: ``score(domain, question, replies)`` -> one score in [0, 1] (or NaN) each."""

    name: str
    score: Callable[[str, str, list[str]], list[float]]


def load_objectives(specs: Sequence[str], reward_model=None) -> list[AddedObjective]:  # noqa: ANN001
    """The objectives ``specs`` name (module docstring); ``reward_model`` is the client's own evaluator or None."""
    added: list[AddedObjective] = []
    for spec in (s.strip() for s in specs):
        if spec == REWARD_MODEL:
            if reward_model is None:
                raise ObjectiveError("objective 'reward_model' scores with this client's reward model: set "
                                     "--reward-model, or leave it out of --local-objectives")
            added.append(AddedObjective(REWARD_MODEL, _reward_model_score(reward_model)))
            continue
        function = load_function(spec, ENTRY_POINT_GROUP, "objective", ObjectiveError, repr(REWARD_MODEL))
        added.append(AddedObjective(spec.rpartition(":")[2].rpartition(".")[2], _function_score(spec, function)))
    names = [a.name for a in added]
    taken = [n for i, n in enumerate(names) if n in OBJECTIVES or n in names[:i]]
    if taken:
        raise ObjectiveError(f"objective name {taken[0]!r} is already used (the round's are {', '.join(OBJECTIVES)}"
                             f"; added: {', '.join(names)}): rename the function")
    return added


def _reward_model_score(evaluator) -> Callable[[str, str, list[str]], list[float]]:  # noqa: ANN001
    def score(domain: str, question: str, replies: list[str]) -> list[float]:
        rewards = evaluator.score(domain, question, replies)
        return [correctness_score(r, evaluator.reward_min, evaluator.reward_max) for r in rewards]

    return score


def _function_score(spec: str, function: Callable) -> Callable[[str, str, list[str]], list[float]]:
    def one(question: str, reply: str) -> float:
        try:
            value = function(question, reply)
        except Exception as err:  # a partner's code: one bad call costs that candidate its reward, not the round
            log.warning("objective %s raised %s: %s", spec, type(err).__name__, err)
            return math.nan
        score = unit_score(value)
        if score is not None:
            return score
        log.warning("objective %s answered %r: not a number, so the candidate gets no reward", spec, value)
        return math.nan

    return lambda domain, question, replies: [one(question, r) for r in replies]


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
