"""How the orchestrator talks to a reward client that joined from elsewhere.

A joined client opened the connection itself, so the orchestrator cannot
call it: ``JoinedTransport.score`` queues a task and waits for the client to
fetch it (``fetch``, a long poll) and answer it (``submit``). Both sides of
the exchange are checked: only the session that holds a task may answer it,
once, before its deadline. When the session ends (``end_session``: missed
heartbeats, Leave, or a rejoin), every task still open fails at once with
UNAVAILABLE, so its question goes to the next expert without waiting out the
deadline. ``score`` raises ``ScoreError`` carrying a gRPC status code, as a
failed Score RPC to a dialed client would.

Two bounds keep one client from holding the orchestrator's resources: a
session has at most one ``fetch`` waiting at a time (a second raises
``AlreadyPolling``: each waiting poll holds a server thread), and at most
``max_open_tasks`` tasks open (``score`` beyond that fails at once with
RESOURCE_EXHAUSTED, so the question goes to another expert).
"""

from __future__ import annotations

import collections
import secrets
import threading
import time
from dataclasses import dataclass, field

import grpc

from fedgrpo.v1 import federation_pb2 as fpb
from fedgrpo.v1 import reward_client_pb2 as pb


class ScoreError(Exception):
    """A scoring call that failed, with the gRPC status a Score RPC would have ended with."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


class NotYourTask(Exception):
    """The task was never sent to this session (PERMISSION_DENIED)."""


class TaskClosed(Exception):
    """The task was sent to this session but is answered, expired or abandoned (FAILED_PRECONDITION)."""


class UnknownSession(Exception):
    """The session is not (or no longer) this client's (NOT_FOUND: join again)."""


class AlreadyPolling(Exception):
    """The session already has a FetchTasks waiting (RESOURCE_EXHAUSTED: one long poll per session)."""


@dataclass
class _Task:
    task_id: str
    request: pb.ScoreRequest
    deadline: float
    done: threading.Event = field(default_factory=threading.Event)
    rewards: list[float] | None = None
    error: ScoreError | None = None


class JoinedTransport:
    """Tasks of one joined client, and its current session."""

    RECENTLY_CLOSED = 4096

    def __init__(self, name: str, heartbeat_timeout: float, max_open_tasks: int = 32) -> None:
        self.name = name
        self.heartbeat_timeout = heartbeat_timeout
        self.max_open_tasks = max_open_tasks
        self._polling: object | None = None  # the token of the fetch now waiting, if any
        self.session_id: str | None = None
        self.description = pb.DescribeResponse()
        self.last_seen = 0.0
        self._cond = threading.Condition()
        self._queued: collections.deque[_Task] = collections.deque()
        self._open: dict[str, _Task] = {}
        self._closed: collections.OrderedDict[str, None] = collections.OrderedDict()

    # ---- membership --------------------------------------------------------
    def start_session(self, description: pb.DescribeResponse) -> str:
        """A new session (ending any previous one, whose open tasks fail)."""
        self.end_session("rejoined")
        with self._cond:
            self.session_id = secrets.token_urlsafe(18)
            self.description = description
            self.last_seen = time.monotonic()
            return self.session_id

    def end_session(self, why: str) -> int:
        """End the session; every task still open fails with UNAVAILABLE. Returns how many."""
        with self._cond:
            if self.session_id is None:
                return 0
            self.session_id = None
            self._polling = None  # the waiting fetch ends with the session; the next session may poll at once
            failed = list(self._open.values())
            self._queued.clear()
            self._open.clear()
            for task in failed:
                self._close(task.task_id)
                task.error = ScoreError(grpc.StatusCode.UNAVAILABLE, f"reward client {self.name} left ({why})")
                task.done.set()
            self._cond.notify_all()
            return len(failed)

    def check_session(self, session_id: str) -> None:
        with self._cond:
            if not session_id or session_id != self.session_id:
                raise UnknownSession(f"session_id: not a live session of {self.name}; join again")

    def heartbeat(self, session_id: str) -> None:
        with self._cond:
            self.check_session(session_id)
            self.last_seen = time.monotonic()

    @property
    def live(self) -> bool:
        with self._cond:
            return self.session_id is not None and time.monotonic() - self.last_seen <= self.heartbeat_timeout

    def expired(self) -> bool:
        """The session exists but its heartbeats stopped."""
        with self._cond:
            return self.session_id is not None and time.monotonic() - self.last_seen > self.heartbeat_timeout

    def pending(self) -> int:
        with self._cond:
            return len(self._open)

    # ---- the orchestrator's side ------------------------------------------
    def describe(self, timeout: float = 0.0) -> pb.DescribeResponse:
        if not self.live:
            raise ScoreError(grpc.StatusCode.UNAVAILABLE, f"reward client {self.name} is not connected")
        return self.description

    def score(self, request: pb.ScoreRequest, timeout: float) -> pb.ScoreResponse:
        """Send the task and wait up to ``timeout`` seconds for the client's answer."""
        task = _Task(secrets.token_urlsafe(12), request, time.monotonic() + timeout)
        with self._cond:
            if self.session_id is None:
                raise ScoreError(grpc.StatusCode.UNAVAILABLE, f"reward client {self.name} is not connected")
            if len(self._open) >= self.max_open_tasks:
                raise ScoreError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"reward client {self.name} already holds {len(self._open)} open tasks "
                    f"(at most {self.max_open_tasks})",
                )
            self._queued.append(task)
            self._open[task.task_id] = task
            self._cond.notify_all()
        if not task.done.wait(timeout):
            with self._cond:
                if self._open.pop(task.task_id, None) is not None:
                    self._close(task.task_id)
                    try:
                        self._queued.remove(task)
                    except ValueError:
                        pass
            if not task.done.is_set():
                raise ScoreError(grpc.StatusCode.DEADLINE_EXCEEDED, f"no answer within {timeout:.1f}s")
        if task.error is not None:
            raise task.error
        return pb.ScoreResponse(rewards=task.rewards or [])

    # ---- the client's side -------------------------------------------------
    def fetch(
        self, session_id: str, wait: float, max_tasks: int, poll: object | None = None
    ) -> list[fpb.ScoreTask]:
        """Queued tasks of the session, waiting up to ``wait`` seconds for the first.

        Raises ``AlreadyPolling`` while another fetch of the client waits.
        ``poll``: a token that ``cancel_poll(poll)`` uses to end the wait early
        (the caller went away).
        """
        poll = poll if poll is not None else object()
        deadline = time.monotonic() + wait
        with self._cond:
            self.check_session(session_id)
            self.last_seen = time.monotonic()  # a poll is as good as a heartbeat
            if self._polling is not None:
                raise AlreadyPolling(f"session_id: {self.name} already has a FetchTasks waiting; one at a time")
            self._polling = poll
            try:
                while not self._queued and self.session_id == session_id and self._polling is poll:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                cancelled = self._polling is not poll
            finally:
                if self._polling is poll:
                    self._polling = None
            if self.session_id != session_id:
                raise UnknownSession(f"session_id: the session of {self.name} ended; join again")
            if cancelled:
                return []  # nobody would receive them: the tasks stay queued for the next poll
            now = time.monotonic()
            tasks = []
            while self._queued and len(tasks) < max_tasks:
                task = self._queued.popleft()
                tasks.append(
                    fpb.ScoreTask(
                        task_id=task.task_id, request=task.request, deadline_seconds=max(0.0, task.deadline - now)
                    )
                )
            self.last_seen = time.monotonic()
            return tasks

    def cancel_poll(self, poll: object) -> None:
        """End the wait of fetch ``poll`` (its caller went away), freeing the session's poll."""
        with self._cond:
            if self._polling is poll:
                self._polling = None
                self._cond.notify_all()

    def submit(self, session_id: str, task_id: str, rewards: list[float], error: str) -> None:
        with self._cond:
            self.check_session(session_id)
            self.last_seen = time.monotonic()
            task = self._open.get(task_id)
            if task is None:
                if task_id in self._closed:
                    raise TaskClosed(f"task_id {task_id}: already answered, expired or abandoned")
                raise NotYourTask(f"task_id {task_id!r}: no such task was sent to {self.name}")
            if error:
                task.error = ScoreError(grpc.StatusCode.NOT_FOUND, f"{self.name}: {error}")
            elif len(rewards) != len(task.request.candidates):
                raise ValueError(
                    f"rewards: {len(rewards)} values for the task's {len(task.request.candidates)} candidates"
                )
            else:
                task.rewards = list(rewards)
            del self._open[task_id]
            self._close(task_id)
            task.done.set()

    def _close(self, task_id: str) -> None:
        self._closed[task_id] = None
        while len(self._closed) > self.RECENTLY_CLOSED:
            self._closed.popitem(last=False)
