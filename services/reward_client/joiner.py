"""A reward client joining the orchestrator from another machine.

``Joiner`` opens every connection itself (outbound only: it works behind a
firewall). It joins with its description (with TLS, under its
certificate's identity), sends a heartbeat every ``heartbeat_seconds`` the
orchestrator asks for, and long-polls for scoring tasks, answering each
with the same ``RewardClientServicer.answer`` that serves the Score RPC: one
reward per candidate, or the reason it cannot score. When the orchestrator
is unreachable or forgets the session (it restarted), the joiner joins
again, retrying with jittered exponential backoff, so a client outlives
restarts on either side.
"""

from __future__ import annotations

import logging
import threading
from concurrent import futures
from typing import TYPE_CHECKING

import grpc

from fedgrpo import serving
from fedgrpo.serving import RETRYABLE_CODES as RETRYABLE
from fedgrpo.serving import retry_backoff as backoff
from fedgrpo.v1 import federation_pb2 as fpb
from fedgrpo.v1 import federation_pb2_grpc as fpb_grpc
from fedgrpo.v1 import reward_client_pb2 as pb

from .config import RewardClientSettings
from .server import Refused, RewardClientServicer

if TYPE_CHECKING:
    from .local_training.trainer import LocalTrainer

log = logging.getLogger(__name__)



class Joiner:
    def __init__(self, settings: RewardClientSettings, servicer: RewardClientServicer,
                 local: LocalTrainer | None = None) -> None:
        self.settings, self.servicer, self.local = settings, servicer, local
        self.rounds_trained = 0
        self.channel = serving.channel(
            settings.orchestrator, settings.identity(), max_message_bytes=settings.max_message_bytes
        )
        self.stub = fpb_grpc.FederationServiceStub(self.channel)
        self.pool = futures.ThreadPoolExecutor(settings.join_workers, thread_name_prefix="task")
        self.stopped = threading.Event()
        self.session: str | None = None
        self.heartbeat_seconds = 5.0
        self.max_wait = 20.0
        self.answered = 0

    def start(self) -> None:
        threading.Thread(target=self._run, name="join", daemon=True).start()
        threading.Thread(target=self._heartbeats, name="heartbeat", daemon=True).start()
        if self.local is not None:
            threading.Thread(target=self._rounds, name="rounds", daemon=True).start()

    def stop(self) -> None:
        self.stopped.set()
        session = self.session
        if session:
            try:
                self.stub.Leave(fpb.LeaveRequest(session_id=session), timeout=2)
                log.info("left the federation")
            except grpc.RpcError:
                pass
        self.pool.shutdown(wait=False, cancel_futures=True)

    def _join(self) -> None:
        """Join, retrying until it works or the client stops."""
        description = self.servicer.Describe(pb.DescribeRequest(), None)
        attempt = 0
        while not self.stopped.is_set():
            try:
                reply = self.stub.Join(fpb.JoinRequest(description=description), timeout=10)
            except grpc.RpcError as err:
                if err.code() not in RETRYABLE:
                    log.error("the orchestrator refused to let %s join: %s: %s", self.settings.name,
                              err.code().name, err.details())
                wait = backoff(attempt, cap=30.0 if err.code() in RETRYABLE else 60.0)
                if attempt % 10 == 0:
                    log.warning("cannot join %s (%s: %s); retrying in %.1fs", self.settings.orchestrator,
                                err.code().name, err.details(), wait)
                attempt += 1
                self.stopped.wait(wait)
                continue
            self.session = reply.session_id
            self.heartbeat_seconds = reply.heartbeat_seconds or 5.0
            self.max_wait = reply.max_wait_seconds or 20.0
            log.info("joined %s as %s (heartbeat every %.1fs)", self.settings.orchestrator, self.settings.name,
                     self.heartbeat_seconds)
            return

    def _heartbeats(self) -> None:
        while not self.stopped.wait(self.heartbeat_seconds):
            session = self.session
            if session is None:
                continue
            try:
                self.stub.Heartbeat(fpb.HeartbeatRequest(session_id=session), timeout=self.heartbeat_seconds)
            except grpc.RpcError as err:
                if err.code() == grpc.StatusCode.NOT_FOUND and self.session == session:
                    log.warning("the orchestrator forgot our session; joining again")
                    self.session = None

    def _run(self) -> None:
        failures = 0
        while not self.stopped.is_set():
            if self.session is None:
                self._join()
                continue
            session = self.session
            try:
                reply = self.stub.FetchTasks(
                    fpb.FetchTasksRequest(session_id=session, wait_seconds=min(20.0, self.max_wait),
                                          max_tasks=4 * self.settings.join_workers),
                    timeout=min(20.0, self.max_wait) + 10,
                )
                failures = 0
            except grpc.RpcError as err:
                if err.code() == grpc.StatusCode.NOT_FOUND:
                    self.session = None
                elif not self.stopped.is_set():
                    failures += 1
                    wait = backoff(failures)
                    log.warning("fetching tasks failed (%s); retrying in %.1fs", err.code().name, wait)
                    if failures >= 3:
                        self.session = None  # the orchestrator may have restarted: join again
                    self.stopped.wait(wait)
                continue
            for task in reply.tasks:
                self.pool.submit(self._answer, session, task)

    def _rounds(self) -> None:
        """Take the training rounds sent to this client, one at a time (``local_training/rounds.py``)."""
        failures = 0
        while not self.stopped.is_set():
            session = self.session
            if session is None:
                self.stopped.wait(0.5)
                continue
            wait = min(20.0, self.max_wait)
            try:
                reply = self.stub.FetchRound(fpb.FetchRoundRequest(session_id=session, wait_seconds=wait),
                                             timeout=wait + 10)
                failures = 0
            except grpc.RpcError as err:
                if not self.stopped.is_set():
                    failures += 1
                    if err.code() not in RETRYABLE and err.code() != grpc.StatusCode.NOT_FOUND:
                        log.error("the orchestrator refused FetchRound: %s: %s", err.code().name, err.details())
                    self.stopped.wait(backoff(failures, cap=30.0))
                continue
            if reply.HasField("round"):
                from .local_training.rounds import take_round

                assert self.local is not None
                if take_round(self.stub, session, reply.round, self.local, self.settings.max_adapter_bytes):
                    self.rounds_trained += 1

    def _answer(self, session: str, task: fpb.ScoreTask) -> None:
        request = fpb.SubmitRewardsRequest(session_id=session, task_id=task.task_id)
        try:
            request.rewards.extend(self.servicer.answer(task.request))
        except Refused as refused:
            request.error = str(refused)
        except Exception as err:  # one task must not take the client down
            log.exception("task %s failed", task.task_id)
            request.error = f"{type(err).__name__}: {err}"
        for attempt in range(3):
            try:
                self.stub.SubmitRewards(request, timeout=10)
                self.answered += 1
                return
            except grpc.RpcError as err:
                if err.code() not in RETRYABLE:
                    log.warning("rewards of task %s refused: %s: %s", task.task_id, err.code().name, err.details())
                    return
                self.stopped.wait(backoff(attempt))
