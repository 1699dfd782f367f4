"""Reward for a candidate answer, computed by a reward client from its labelled entry.

Contract
--------
``score_completion(domain, entry, completion)`` returns a float in
``[REWARD_MIN, REWARD_MAX] = [0, 1]``::

    CORRECT_WEIGHT * correct + FORMAT_WEIGHT * concise      (0.9 and 0.1)

* ``correct`` = 1 when the domain's own reasoning-gym
  ``score_answer(extract_answer(completion), entry)`` is a full 1.0, else 0
  (also 0 when no number can be extracted).
* ``concise`` = ``is_concise(completion)`` (the reply is just the number).

So: right and concise -> 1.0, right but verbose -> 0.9, concise but wrong -> 0.1,
verbose and wrong / no number -> 0.0.

Why all-or-nothing: reasoning-gym's default ``score_answer`` (basic_arithmetic,
letter_counting, leg_counting) and chain_sum's ``compute_decimal_reward`` give
*partial credit* ``len(oracle)/len(answer)`` when the oracle string is a
substring of a wrong answer (oracle "4": "14" -> 0.5, "-4" -> 0.5). A wrong
answer that merely contains the right digits must not be rewarded, or the
policy learns to pad answers. So rewards take exactly the four values above,
and a reward >= ``CORRECT_THRESHOLD`` means right.
"""

from __future__ import annotations

import functools
from typing import Any

from .domains import get_dataset
from .prompts import extract_answer, is_concise

__all__ = [
    "CORRECT_WEIGHT",
    "FORMAT_WEIGHT",
    "REWARD_MIN",
    "REWARD_MAX",
    "CORRECT_THRESHOLD",
    "answer_score",
    "score_completion",
    "is_correct",
]

CORRECT_WEIGHT = 0.9
FORMAT_WEIGHT = 0.1
REWARD_MIN = 0.0
REWARD_MAX = 1.0
CORRECT_THRESHOLD = 0.5  # a reward >= this means "judged correct"


@functools.lru_cache(maxsize=None)
def _scorer(domain: str):
    # score_answer does not depend on seed/size; any instance of the domain's dataset will do.
    return get_dataset(domain, 0, 1)


def answer_score(domain: str, entry: dict[str, Any], completion: str) -> float:
    """1.0 if the task's own verifier fully accepts the extracted answer, else 0.0."""
    answer = extract_answer(completion)
    if answer is None:
        return 0.0
    try:
        s = float(_scorer(domain).score_answer(answer, entry))
    except Exception:
        return 0.0
    return 1.0 if s >= 1.0 else 0.0  # partial credit is no credit (see module doc)


def score_completion(domain: str, entry: dict[str, Any], completion: str) -> float:
    """Reward in [0, 1]: 0.9 * task score of the extracted answer + 0.1 * concise."""
    r = CORRECT_WEIGHT * answer_score(domain, entry, completion) + FORMAT_WEIGHT * float(is_concise(completion))
    return round(min(REWARD_MAX, max(REWARD_MIN, r)), 12)


def is_correct(domain: str, entry: dict[str, Any], completion: str) -> bool:
    """True iff the task's score of the extracted answer is a full 1.0 (used for accuracy)."""
    return answer_score(domain, entry, completion) >= 1.0
