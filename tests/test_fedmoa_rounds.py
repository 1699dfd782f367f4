"""Rounds of a parameter-exchange run: one answer per client, quorum, deadline, retries."""

import threading
import time

import grpc
import pytest

from services.orchestrator.fedmoa.rounds import AlreadyAnswered, NotSent, RoundClosed, Rounds, UnknownRound


def test_answers_are_checked_and_nothing_changes_on_refusal():
    rounds = Rounds("run-1")
    r = rounds.open(1, {"a", "b", "c"}, deadline_seconds=30, quorum=2)
    rounds.submit("a", r.round_id, "adapter-a")
    with pytest.raises(AlreadyAnswered) as twice:
        rounds.submit("a", r.round_id, "another")
    assert twice.value.code == grpc.StatusCode.ALREADY_EXISTS
    with pytest.raises(NotSent) as stranger:
        rounds.submit("d", r.round_id, "adapter-d")
    assert stranger.value.code == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(UnknownRound) as unknown:
        rounds.submit("a", "run-1/round-2/attempt-1", "x")
    assert unknown.value.code == grpc.StatusCode.NOT_FOUND
    rounds.reject("b", r.round_id, "lora_B.weight: holds NaN")
    with pytest.raises(AlreadyAnswered):  # a rejected client cannot try again within the round
        rounds.submit("b", r.round_id, "fixed")
    outcome = rounds.close(r.round_id)
    assert not outcome.complete  # 1 accepted < quorum 2: never applied
    assert outcome.accepted == {"a": "adapter-a"} and outcome.rejected == {"b": "lora_B.weight: holds NaN"}
    assert outcome.missing == {"c"}
    with pytest.raises(RoundClosed) as late:
        rounds.submit("c", r.round_id, "late")
    assert late.value.code == grpc.StatusCode.FAILED_PRECONDITION
    retry = rounds.open(1, {"a", "b", "c"}, deadline_seconds=30, quorum=2)
    assert (retry.number, retry.attempt) == (1, 2) and retry.round_id != r.round_id
    rounds.submit("c", retry.round_id, "adapter-c")
    rounds.submit("a", retry.round_id, "adapter-a2")
    assert rounds.close(retry.round_id).complete


def test_wait_returns_when_all_answered_or_at_the_deadline():
    rounds = Rounds("run-2")
    r = rounds.open(1, {"a", "b"}, deadline_seconds=30, quorum=1)
    threading.Timer(0.1, rounds.submit, ("a", r.round_id, 1)).start()
    threading.Timer(0.2, rounds.submit, ("b", r.round_id, 2)).start()
    rounds.wait(r.round_id)
    assert rounds.close(r.round_id).accepted == {"a": 1, "b": 2}
    late = rounds.open(2, {"a", "b"}, deadline_seconds=0.3, quorum=1)
    rounds.submit("a", late.round_id, 1)
    rounds.wait(late.round_id)  # b never answers: returns at the deadline
    outcome = rounds.close(late.round_id)
    assert outcome.complete and outcome.missing == {"b"}
    assert time.monotonic() >= late.deadline


def test_bad_rounds_are_refused():
    rounds = Rounds("run-3")
    with pytest.raises(ValueError, match="quorum"):
        rounds.open(1, {"a"}, 10, quorum=2)
    with pytest.raises(ValueError, match="participants"):
        rounds.open(1, set(), 10, quorum=1)


def test_a_round_ends_early_when_the_clients_yet_to_answer_have_left():
    rounds = Rounds("run-4")
    r = rounds.open(1, {"a", "b"}, deadline_seconds=60, quorum=1)
    rounds.submit("a", r.round_id, 1)
    rounds.wait(r.round_id, gone=lambda: {"b"})
    assert time.monotonic() < r.deadline  # it returned because b left, not at the deadline
    outcome = rounds.close(r.round_id)
    assert outcome.complete and outcome.missing == {"b"}
