"""The task protocol of a joined reward client, driven directly (``JoinedTransport``).

The orchestrator's side (``score``) runs on a thread, the client's side
(``fetch``, ``submit``, ``heartbeat``) on the test's: a task is answered
once, by its session, before its deadline; a late, repeated, miscounted or
foreign answer is refused and changes nothing; a rejoin fails the old
session's tasks at once; heartbeats that stop make the session expire.
No timing thresholds: every wait below either must end (an event), or is a
deadline the protocol itself is given.
"""

from __future__ import annotations

import threading
import time

import grpc
import pytest

from fedgrpo.services.orchestrator.joined import JoinedTransport, NotYourTask, ScoreError, TaskClosed, UnknownSession
from fedgrpo.v1 import reward_client_pb2 as pb

from .test_serving_bounds import wait_until

HANG = 60.0  # a wait that must end long before this has hung


class Scoring:
    """One ``score`` call on its own thread: its response or its ScoreError."""

    def __init__(self, transport: JoinedTransport, candidates: list[str], timeout: float = HANG) -> None:
        self.response: pb.ScoreResponse | None = None
        self.error: ScoreError | None = None
        request = pb.ScoreRequest(question_id="q", question="1 + 1 = ?", domain="add1", candidates=candidates)
        self.thread = threading.Thread(target=self._run, args=(transport, request, timeout), daemon=True)
        self.thread.start()

    def _run(self, transport: JoinedTransport, request: pb.ScoreRequest, timeout: float) -> None:
        try:
            self.response = transport.score(request, timeout)
        except ScoreError as err:
            self.error = err

    def result(self) -> Scoring:
        self.thread.join(HANG)
        assert not self.thread.is_alive(), "score() never returned"
        return self


def joined(name: str = "client", heartbeat_timeout: float = 600) -> tuple[JoinedTransport, str]:
    transport = JoinedTransport(name, heartbeat_timeout=heartbeat_timeout)
    return transport, transport.start_session(pb.DescribeResponse(name=name))


def one_task(transport: JoinedTransport, session: str):  # type: ignore[no-untyped-def]
    (task,) = transport.fetch(session, HANG, 1)
    return task


def test_an_answer_reaches_the_orchestrator_once_and_a_second_one_is_refused():
    transport, session = joined()
    scoring = Scoring(transport, ["2", "3"])
    task = one_task(transport, session)
    assert list(task.request.candidates) == ["2", "3"] and 0 < task.deadline_seconds <= HANG
    transport.submit(session, task.task_id, [1.0, 0.0], "")
    assert list(scoring.result().response.rewards) == [1.0, 0.0]
    with pytest.raises(TaskClosed):
        transport.submit(session, task.task_id, [0.0, 1.0], "")
    assert transport.pending() == 0


def test_a_miscounted_answer_is_refused_and_the_task_stays_open_for_a_right_one():
    transport, session = joined()
    scoring = Scoring(transport, ["2", "3", "4"])
    task = one_task(transport, session)
    with pytest.raises(ValueError, match="2 values for the task's 3 candidates"):
        transport.submit(session, task.task_id, [1.0, 0.0], "")
    assert transport.pending() == 1
    transport.submit(session, task.task_id, [1.0, 0.0, 0.0], "")
    assert list(scoring.result().response.rewards) == [1.0, 0.0, 0.0]


def test_a_client_that_cannot_judge_says_so_and_the_orchestrator_sees_not_found():
    transport, session = joined()
    scoring = Scoring(transport, ["2"])
    transport.submit(session, one_task(transport, session).task_id, [], "no checker for add1")
    error = scoring.result().error
    assert error is not None and error.code() == grpc.StatusCode.NOT_FOUND and "no checker for add1" in error.details()


def test_an_answer_after_the_deadline_is_refused_and_the_orchestrator_already_moved_on():
    transport, session = joined()
    scoring = Scoring(transport, ["2"], timeout=3.0)
    task = one_task(transport, session)
    error = scoring.result().error  # returns once its 3 s deadline passed
    assert error is not None and error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    with pytest.raises(TaskClosed):
        transport.submit(session, task.task_id, [1.0], "")
    assert transport.pending() == 0


def test_a_task_that_expired_before_it_was_fetched_is_never_handed_out():
    transport, session = joined()
    expired = Scoring(transport, ["2"], timeout=0.2).result()
    assert expired.error is not None and expired.error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert transport.fetch(session, 0, 16) == []


def test_answers_for_tasks_never_sent_or_from_another_session_are_refused():
    transport, session = joined()
    scoring = Scoring(transport, ["2"])
    task = one_task(transport, session)
    with pytest.raises(NotYourTask):
        transport.submit(session, "made-up", [1.0], "")
    with pytest.raises(UnknownSession):
        transport.submit("someone-elses", task.task_id, [0.0], "")
    other, other_session = joined("other")
    with pytest.raises(NotYourTask):  # a task of this client, answered to another client's transport
        other.submit(other_session, task.task_id, [0.0], "")
    transport.submit(session, task.task_id, [1.0], "")  # still open for its own session
    assert list(scoring.result().response.rewards) == [1.0]


def test_a_rejoin_fails_the_old_sessions_open_tasks_at_once_and_retires_its_id():
    transport, old = joined()
    fetched = Scoring(transport, ["2"])
    task = one_task(transport, old)
    queued = Scoring(transport, ["3"])
    wait_until(lambda: transport.pending() == 2, "the second task never opened")  # queued, not yet fetched
    new = transport.start_session(pb.DescribeResponse(name="client"))
    assert new != old
    for scoring in (fetched.result(), queued.result()):  # long before their HANG deadline
        assert scoring.error is not None and scoring.error.code() == grpc.StatusCode.UNAVAILABLE
        assert "rejoined" in scoring.error.details()
    for call in (lambda: transport.heartbeat(old), lambda: transport.fetch(old, 0, 1),
                 lambda: transport.submit(old, task.task_id, [1.0], "")):
        with pytest.raises(UnknownSession):
            call()
    with pytest.raises(TaskClosed):  # the new session cannot answer the abandoned task either
        transport.submit(new, task.task_id, [1.0], "")
    assert transport.fetch(new, 0, 16) == []  # the queued task did not move to the new session
    scoring = Scoring(transport, ["4"])
    transport.submit(new, one_task(transport, new).task_id, [0.5], "")
    assert list(scoring.result().response.rewards) == [0.5]


def test_a_session_whose_heartbeats_stop_expires_and_a_heartbeat_or_poll_keeps_it():
    transport, session = joined(heartbeat_timeout=3.0)
    assert transport.live and not transport.expired()
    time.sleep(3.5)
    assert transport.expired() and not transport.live
    with pytest.raises(ScoreError) as err:
        transport.describe()
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    transport.heartbeat(session)
    assert transport.live
    time.sleep(3.5)
    assert not transport.live
    transport.fetch(session, 0, 1)  # a poll counts as a heartbeat
    assert transport.live and transport.describe().name == "client"
