"""The rounds of a parameter-exchange run: who was sent what, who answered, when a round is complete.

Contract
--------
``Rounds.open(number, participants, deadline_seconds, quorum)`` starts an
attempt of round ``number`` sent to ``participants`` (client identities) and
returns its ``Round`` (``round_id`` names it on the wire). Each participant
may then answer once: ``submit(identity, round_id, adapter)`` records an
accepted adapter, ``reject(identity, round_id, reason)`` one that failed its
checks (logged with the client's identity; it counts as the client's answer,
so a client cannot probe the checks within a round). A second answer is
``AlreadyAnswered``, an answer from a client the round was not sent to
``NotSent``, to a round that is closed ``RoundClosed``, to an unknown round
``UnknownRound``: each carries the gRPC status it maps to, and none changes
anything.

``wait(round_id)`` blocks until every participant has answered (or left:
``gone``) or the deadline passes; ``close(round_id)`` then ends the attempt and returns its
``Outcome``: ``complete`` when at least ``quorum`` adapters were accepted
(the caller applies them), otherwise not (the caller opens another attempt of
the same round number and applies nothing: a round is never half-applied).
Late answers to a closed attempt are refused. Thread-safe.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

import grpc

log = logging.getLogger(__name__)


class RoundError(Exception):
    code = grpc.StatusCode.FAILED_PRECONDITION


class UnknownRound(RoundError):
    code = grpc.StatusCode.NOT_FOUND


class NotSent(RoundError):
    code = grpc.StatusCode.PERMISSION_DENIED


class AlreadyAnswered(RoundError):
    code = grpc.StatusCode.ALREADY_EXISTS


class RoundClosed(RoundError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class TooMany(RoundError):
    """More downloads or concurrent uploads of one round than a client needs."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


@dataclass
class Round:
    round_id: str
    number: int
    attempt: int
    participants: frozenset[str]
    quorum: int
    deadline: float  # time.monotonic()
    accepted: dict[str, Any] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)
    closed: bool = False

    @property
    def answered(self) -> set[str]:
        return set(self.accepted) | set(self.rejected)


@dataclass(frozen=True)
class Outcome:
    round_id: str
    number: int
    attempt: int
    complete: bool
    accepted: dict[str, Any]
    rejected: dict[str, str]
    missing: frozenset[str]


class Rounds:
    def __init__(self, run_id: str, clock=time.monotonic) -> None:  # noqa: ANN001
        self.run_id, self.clock = run_id, clock
        self._rounds: dict[str, Round] = {}
        self._attempts: dict[int, int] = {}
        self._changed = threading.Condition()

    def open(self, number: int, participants: Collection[str], deadline_seconds: float, quorum: int) -> Round:
        if not participants:
            raise ValueError("participants: a round needs at least one client")
        if not 1 <= quorum <= len(participants):
            raise ValueError(f"quorum: must be in 1..{len(participants)} (the participants), got {quorum}")
        if deadline_seconds <= 0:
            raise ValueError(f"deadline_seconds: must be > 0, got {deadline_seconds}")
        with self._changed:
            attempt = self._attempts.get(number, 0) + 1
            self._attempts[number] = attempt
            # The nonce keeps ids unique across orchestrator restarts (a new book starts at attempt 1 again).
            round_id = f"{self.run_id}/round-{number}/attempt-{attempt}-{secrets.token_hex(4)}"
            opened = Round(round_id, number, attempt, frozenset(participants), quorum,
                           self.clock() + deadline_seconds)
            self._rounds[round_id] = opened
            return opened

    def get(self, round_id: str) -> Round:
        with self._changed:
            found = self._rounds.get(round_id)
            if found is None:
                raise UnknownRound(f"round_id: no round {round_id!r} in run {self.run_id}")
            return found

    def _answerable(self, identity: str, round_id: str) -> Round:
        found = self._rounds.get(round_id)
        if found is None:
            raise UnknownRound(f"round_id: no round {round_id!r} in run {self.run_id}")
        if identity not in found.participants:
            raise NotSent(f"round_id: round {round_id} was not sent to {identity}")
        if identity in found.answered:
            raise AlreadyAnswered(f"round_id: {identity} already answered round {round_id}")
        if found.closed:
            raise RoundClosed(f"round_id: round {round_id} is closed (its deadline passed)")
        return found

    def check(self, identity: str, round_id: str) -> Round:
        """The round ``identity`` may answer now, or the ``RoundError`` its answer would get."""
        with self._changed:
            return self._answerable(identity, round_id)

    def submit(self, identity: str, round_id: str, adapter: Any) -> None:
        with self._changed:
            self._answerable(identity, round_id).accepted[identity] = adapter
            self._changed.notify_all()

    def reject(self, identity: str, round_id: str, reason: str) -> None:
        with self._changed:
            self._answerable(identity, round_id).rejected[identity] = reason
            self._changed.notify_all()
        log.warning("round %s: rejected the adapter of %s: %s", round_id, identity, reason)

    def wait(self, round_id: str, stop: Callable[[], bool] = lambda: False,
             gone: Callable[[], Collection[str]] = frozenset) -> None:
        """Until every participant answered or is ``gone()`` (left the federation), the deadline passed, or
        ``stop()`` (the run cancelled, the service stopping). Both are asked every half second."""
        with self._changed:
            found = self.get(round_id)
            while not found.closed and not found.participants <= found.answered | set(gone()):
                left = found.deadline - self.clock()
                if left <= 0 or stop():
                    return
                self._changed.wait(min(left, 0.5))

    def close(self, round_id: str) -> Outcome:
        with self._changed:
            found = self.get(round_id)
            found.closed = True
            self._changed.notify_all()
            return Outcome(
                found.round_id, found.number, found.attempt, len(found.accepted) >= found.quorum,
                dict(found.accepted), dict(found.rejected), frozenset(found.participants - found.answered),
            )
