"""Expert selection: which reward clients judge a question.

``select_experts(domain, clients, m)`` returns the names of up to ``m``
healthy clients, those declaring the question's domain first, then the rest;
within each group exact judges first (``exactness``), then name order (a
deterministic tie-break). It is the first, simple policy; the confidence
graph replaces it by providing another function with the same contract.

``exactness(kinds)`` ranks a client by the evaluators it declares in its
self-description (Describe / Join): an answer-based evaluator (it checks the
answer against ground truth) judges exactly, a model-based one (a model's
opinion) approximately. Wherever two clients are otherwise equal (same
competence, same domain standing), the more exact judge is chosen first.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from fedgrpo.v1 import common_pb2

ANSWER_BASED = common_pb2.EVALUATOR_KIND_ANSWER_BASED
MODEL_BASED = common_pb2.EVALUATOR_KIND_MODEL_BASED


@dataclass(frozen=True)
class ClientView:
    name: str
    domains: tuple[str, ...]
    healthy: bool = True
    evaluator_kinds: tuple[int, ...] = ()  # EvaluatorKind values the client declares


def exactness(kinds: Collection[int]) -> int:
    """Tie-break rank of a client's evaluators, lower first: 0 answer-based, 1 model-based only, 2 none declared."""
    if ANSWER_BASED in kinds:
        return 0
    if MODEL_BASED in kinds:
        return 1
    return 2


def select_experts(domain: str, clients: Sequence[ClientView], m: int) -> list[str]:
    live = sorted(
        (c for c in clients if c.healthy),
        key=lambda c: (domain not in c.domains, exactness(c.evaluator_kinds), c.name),
    )
    return [c.name for c in live[:m]]
