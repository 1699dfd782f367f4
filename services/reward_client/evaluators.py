"""Evaluators: how a reward client turns candidate answers into rewards.

An evaluator declares its kind and reward range, says whether it can judge a
question, and scores candidates: ``score(domain, question, candidates)``
returns one float per candidate in ``[reward_min, reward_max]``. Evaluators
are pluggable; the client asks each in turn and the first that can judge a
question scores it. Which one was used never leaves the client.
"""

from __future__ import annotations

from typing import Protocol

from fedgrpo.tasks import REWARD_MAX, REWARD_MIN, build_questions, score_completion
from fedgrpo.v1 import common_pb2


class Evaluator(Protocol):
    kind: int  # common_pb2.EvaluatorKind
    reward_min: float
    reward_max: float

    def can_judge(self, domain: str, question: str) -> bool: ...

    def score(self, domain: str, question: str, candidates: list[str]) -> list[float]: ...


class AnswerBasedEvaluator:
    """Checks answers against the client's private ground truth (AE).

    Holds the labelled entries of its domains, keyed by (domain, question
    text), and scores with the task's own verifier.
    """

    kind = common_pb2.EVALUATOR_KIND_ANSWER_BASED
    reward_min = REWARD_MIN
    reward_max = REWARD_MAX

    def __init__(self, domains: list[str], bank_seed: int, bank_size: int) -> None:
        self._entries: dict[tuple[str, str], dict] = {}
        for domain in domains:
            for q in build_questions(domain, bank_seed, bank_size):
                self._entries[(domain, q.text)] = q.entry

    def __len__(self) -> int:
        return len(self._entries)

    def can_judge(self, domain: str, question: str) -> bool:
        return (domain, question) in self._entries

    def score(self, domain: str, question: str, candidates: list[str]) -> list[float]:
        entry = self._entries[(domain, question)]
        return [score_completion(domain, entry, c) for c in candidates]
