"""Failed experts: what to ask again, whom to ask instead, and when a question is given up.

Pure decisions over one step's scoring outcomes; ``RunExecutor._recover_missing``
is the shell that makes the calls and logs. The rules (README "Faults and recovery"):

- **Cannot judge** (the client answered NOT_FOUND, or sent NaN for every
  candidate): the expert is replaced at once, never asked again.
- **Transient** (``RETRYABLE_CODES``: UNAVAILABLE, DEADLINE_EXCEEDED,
  RESOURCE_EXHAUSTED): a live expert is asked once more; the second failure,
  or an expert that left (no longer live), is replaced.
- **Any other error** from a live client, and **answers** it chose to give
  (out of range, wrong count, some NaN): kept as they are (those rewards are
  excluded); asking again would get the same. From a client that left: replaced.
- **A replacement** is a live client of the run's ``reward_clients``, never a
  current expert of the question and never one that already failed on it; two
  failed experts of one question get two different replacements; the first
  in the selection's ranking wins. With nobody left, the row stays missing.
- **Quorum**: a question that fewer than ``expert_quorum`` experts answered
  (a row with at least one reward) is dropped from the step.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import grpc

from fedgrpo.serving import RETRYABLE_CODES

from .clients import ScoreOutcome

# The expert says it cannot judge the question (the reward client's Refused / a joined client's error).
CANNOT_JUDGE = grpc.StatusCode.NOT_FOUND
# Rounds of asking again in one step: a retry, then up to two rounds of replacements.
MAX_ROUNDS = 3


class Action(enum.Enum):
    KEEP = "keep"  # answered (or failed for good): nothing to ask
    RETRY = "retry"  # ask the same expert once more
    REPLACE = "replace"  # ask the next expert instead


def decide(code: grpc.StatusCode | None, live: bool, retried: bool) -> Action:
    """What to do with one expert's call on one question.

    ``code``: the status its call failed with (None: it answered; a client
    that sent NaN for every candidate counts as ``CANNOT_JUDGE``); ``live``:
    the client is still healthy; ``retried``: it was already asked again on
    this question in this step.
    """
    if code is None:
        return Action.KEEP
    if code == CANNOT_JUDGE or not live:
        return Action.REPLACE
    if code in RETRYABLE_CODES:
        return Action.REPLACE if retried else Action.RETRY
    return Action.KEEP


@dataclass(frozen=True)
class Ask:
    """One call to make: expert slot ``slot`` of question ``question`` goes to ``target``
    (consensus weight ``weight``)."""

    question: int
    slot: int
    target: str
    weight: float

    def is_retry(self, experts: Sequence[Sequence[str]]) -> bool:
        return experts[self.question][self.slot] == self.target


def plan_round(
    experts: Sequence[Sequence[str]],
    codes: Sequence[Sequence[grpc.StatusCode | None]],
    weights: Sequence[Sequence[float]],
    live: Collection[str],
    retried: Collection[tuple[int, str]],
    failed: Sequence[Collection[str]],
    ranked: Mapping[int, Sequence[tuple[str, float]]],
    allowed: Collection[str],
) -> tuple[list[Ask], list[tuple[int, int]]]:
    """One round of asking again; returns (asks, slots left missing for want of a replacement).

    ``experts[q][k]`` / ``codes[q][k]`` / ``weights[q][k]``: question q's k-th
    expert, how its call failed, its weight. ``retried``: (question, expert)
    pairs already asked again; ``failed[q]``: experts that failed on question q
    before (replaced ones). ``ranked[q]``: the clients in the selection's order
    of preference for question q, with their weight (needed only for questions
    that have a slot to replace, see ``needs_replacement``); ``allowed``: the
    run's clients.
    """
    asks: list[Ask] = []
    unfilled: list[tuple[int, int]] = []
    for q, (names, row_codes) in enumerate(zip(experts, codes)):
        taken = set(names) | set(failed[q])
        for k, (name, code) in enumerate(zip(names, row_codes)):
            action = decide(code, name in live, (q, name) in retried)
            if action is Action.RETRY:
                asks.append(Ask(q, k, name, weights[q][k]))
            elif action is Action.REPLACE:
                pick = next(
                    ((n, w) for n, w in ranked.get(q, ()) if n in allowed and n in live and n not in taken), None
                )
                if pick is None:
                    unfilled.append((q, k))
                    continue
                taken.add(pick[0])  # a second failed slot of this question gets someone else
                asks.append(Ask(q, k, pick[0], pick[1]))
    return asks, unfilled


def needs_replacement(
    experts: Sequence[Sequence[str]],
    codes: Sequence[Sequence[grpc.StatusCode | None]],
    live: Collection[str],
    retried: Collection[tuple[int, str]],
) -> list[int]:
    """The questions with a slot to replace this round (they need a ranking for ``plan_round``)."""
    return [
        q for q, (names, row_codes) in enumerate(zip(experts, codes))
        if any(decide(c, n in live, (q, n) in retried) is Action.REPLACE for n, c in zip(names, row_codes))
    ]


def apply_answer(
    outcome: ScoreOutcome, slot: int, target: str, row: list[float], dropped: int, problem: str | None
) -> list[str]:
    """Put ``target``'s answer in ``slot`` of ``outcome`` in place of the failed row; returns the superseded problems.

    The failed row counted all its rewards dropped; the new row counts for
    itself. The failed call's problem is history (it was asked again), not a
    dropped reward.
    """
    failed = outcome.experts[slot]
    outcome.received += len(row) - dropped
    outcome.dropped += dropped - len(outcome.rows[slot])
    superseded = [p for p in outcome.problems if p.startswith(f"{failed}:")]
    outcome.problems = [p for p in outcome.problems if not p.startswith(f"{failed}:")]
    outcome.rows[slot], outcome.experts[slot] = row, target
    outcome.codes[slot] = getattr(problem, "code", None)
    if problem:
        outcome.problems.append(problem)
    return superseded


def answered(rows: Sequence[Sequence[float]]) -> int:
    """How many experts answered: rows with at least one reward."""
    return sum(any(not math.isnan(r) for r in row) for row in rows)


def apply_quorum(outcomes: Sequence[ScoreOutcome], quorum: int) -> int:
    """Drop every question that fewer than ``quorum`` experts answered; returns how many.

    The quorum holds whatever the number of experts chosen: a question that
    got fewer experts than ``quorum`` (too few live clients) is dropped too.
    """
    below = 0
    for outcome in outcomes:
        n = answered(outcome.rows)
        if n < quorum:
            below += 1
            outcome.problems.append(f"{n} expert(s) answered, quorum {quorum}")
            outcome.dropped += outcome.received
            outcome.received = 0
            outcome.rows = [[math.nan] * len(row) for row in outcome.rows]
    return below
