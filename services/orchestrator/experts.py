"""Expert selection: which reward clients judge a question.

``select_experts(domain, clients, m)`` returns the names of up to ``m``
healthy clients, those declaring the question's domain first, then the rest,
each group in name order (a deterministic tie-break). It is the first, simple
policy; the confidence graph replaces it by providing another function with
the same contract.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class ClientView:
    name: str
    domains: tuple[str, ...]
    healthy: bool = True


def select_experts(domain: str, clients: Sequence[ClientView], m: int) -> list[str]:
    live = sorted((c for c in clients if c.healthy), key=lambda c: (domain not in c.domains, c.name))
    return [c.name for c in live[:m]]
