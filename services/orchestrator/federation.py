"""The orchestrator's federation port: where reward clients join from anywhere.

A thin gRPC shell over ``RewardClients.join`` and each joined client's
``JoinedTransport``. Who calls is the identity (common name) of the verified
client certificate; with ``--plaintext`` (loopback development) it is the
name the client gives. Every request is checked before anything changes:
a name that is not the caller's identity or not allowed is
PERMISSION_DENIED, a session that is not the caller's NOT_FOUND (join
again), rewards for a task never sent to the caller PERMISSION_DENIED, for
one already closed FAILED_PRECONDITION, and a malformed field
INVALID_ARGUMENT naming it.

No member can hold the port's threads: Join is rate-limited per identity
(``join_rate_limit``, RESOURCE_EXHAUSTED), its description is bounded
(name, count and length of domains, evaluator kinds), and a session has at
most one FetchTasks waiting (a second is RESOURCE_EXHAUSTED; a poll whose
caller went away frees its place at once).
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
from collections.abc import Collection

import grpc
from limits import parse_many
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from fedgrpo import serving
from fedgrpo.adapter_transfer import BadAdapter
from fedgrpo.observability import JOINS
from fedgrpo.security import peer_identity
from fedgrpo.settings import NAME
from fedgrpo.v1 import federation_pb2 as fpb
from fedgrpo.v1 import federation_pb2_grpc as fpb_grpc

from .clients import RewardClient, RewardClients
from .fedmoa.exchange import AdapterExchange
from .fedmoa.rounds import RoundError
from .joined import AlreadyPolling, NotYourTask, TaskClosed, UnknownSession

log = logging.getLogger(__name__)

MAX_WAIT_SECONDS = 30.0
MAX_TASKS = 256
MAX_DOMAIN_CHARS = 64
# Domains are public names a client declares: built-in ones or its organisation's own (a labels file's).
MAX_DOMAINS = 64
EVALUATOR_KINDS = (1, 2)  # ANSWER_BASED, MODEL_BASED


def description_problem(d) -> tuple[str, str] | None:  # type: ignore[no-untyped-def]
    """(field, what is wrong) for a join description outside its bounds, or None; echoes at most 80 characters."""
    if not NAME.fullmatch(d.name):
        return "description.name", f"got {d.name[:80]!r}, expected 1-64 letters, digits, '_', '-', '.'"
    if len(d.domains) > MAX_DOMAINS:
        return "description.domains", f"{len(d.domains)} entries, expected at most {MAX_DOMAINS}"
    long = [x for x in d.domains if len(x) > MAX_DOMAIN_CHARS]
    if long:
        return "description.domains", f"{len(long)} entries longer than {MAX_DOMAIN_CHARS} characters"
    if len(set(d.domains)) != len(d.domains):
        return "description.domains", "an entry appears twice"
    malformed = [x for x in d.domains if not NAME.fullmatch(x)]
    if malformed:
        return "description.domains", f"{malformed[0][:80]!r}: expected 1-64 letters, digits, '_', '-', '.'"
    kinds = list(d.evaluator_kinds)
    if not kinds or len(kinds) > len(EVALUATOR_KINDS) or len(set(kinds)) != len(kinds) or any(
        k not in EVALUATOR_KINDS for k in kinds
    ):
        return "description.evaluator_kinds", "expected ANSWER_BASED and/or MODEL_BASED, each once"
    return None


class FederationServicer(fpb_grpc.FederationServiceServicer):
    def __init__(
        self, clients: RewardClients, heartbeat_seconds: float, allowed: Collection[str] = (), plaintext: bool = False,
        join_rate_limit: str = "10/minute", exchange: AdapterExchange | None = None,
    ) -> None:
        self.clients, self.heartbeat_seconds = clients, heartbeat_seconds
        self.exchange = exchange if exchange is not None else AdapterExchange()
        self._round_polls: set[str] = set()
        self._round_polls_lock = threading.Lock()
        self.allowed, self.plaintext = frozenset(allowed), plaintext
        self.join_limits = parse_many(join_rate_limit) if join_rate_limit.strip() else []
        self.join_limiter = MovingWindowRateLimiter(MemoryStorage())

    def _caller(self, context: grpc.ServicerContext, claimed: str = "") -> str | None:
        """The caller's identity: its certificate's name; with plaintext, what it claims."""
        identity = peer_identity(context)
        if identity is None and not self.plaintext:
            serving.refuse(context, grpc.StatusCode.UNAUTHENTICATED,
                           "no client certificate: join with your federation identity", reason="NO_CLIENT_CERTIFICATE")
        return identity if identity is not None else (claimed or None)

    def _client(self, session_id: str, context: grpc.ServicerContext) -> RewardClient:
        """The joined client holding ``session_id``, which must be the caller."""
        if not session_id:
            serving.invalid(context, "session_id", "must not be empty; call Join first")
        identity = self._caller(context)
        candidates = (
            [self.clients.joined_client(identity)] if identity is not None
            else [c for c in self.clients.clients if c.joined]
        )
        for client in candidates:
            if client is not None and client.transport.session_id == session_id:  # type: ignore[union-attr]
                return client
        serving.not_found(context, "session_id: not a live session of this client; join again")

    def Join(self, request: fpb.JoinRequest, context: grpc.ServicerContext) -> fpb.JoinResponse:
        d = request.description
        if not NAME.fullmatch(d.name):
            serving.invalid(
                context, "description.name", f"got {d.name[:80]!r}, expected 1-64 letters, digits, '_', '-', '.'"
            )
        identity = self._caller(context, d.name)
        if identity != d.name:
            serving.refuse(
                context, grpc.StatusCode.PERMISSION_DENIED,
                f"description.name: {d.name!r} is not your identity {identity!r} (your certificate's common name)",
                reason="NAME_NOT_IDENTITY", field="description.name",
            )
        if self.allowed and identity not in self.allowed:
            serving.refuse(context, grpc.StatusCode.PERMISSION_DENIED,
                           f"identity {identity!r} is not a member of this federation", reason="NOT_A_MEMBER")
        # Counted before the description is judged: a storm of malformed joins is a storm too.
        if not all([self.join_limiter.hit(limit, "join", identity) for limit in self.join_limits]):
            JOINS.labels("refused").inc()
            serving.refuse(
                context, grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"Join: more than {'; '.join(str(x) for x in self.join_limits)} joins by {identity!r}; "
                "keep your session (heartbeats) and retry later",
                reason="RATE_LIMITED",
            )
        problem = description_problem(d)
        if problem is not None:
            serving.invalid(context, *problem)
        try:
            _, session = self.clients.join(identity, d, context.peer())
        except ValueError as err:
            serving.invalid(context, str(err).split(":", 1)[0], str(err).split(": ", 1)[-1])
        except KeyError as err:
            serving.refuse(context, grpc.StatusCode.ALREADY_EXISTS, str(err.args[0]))
        return fpb.JoinResponse(
            session_id=session, heartbeat_seconds=self.heartbeat_seconds, max_wait_seconds=MAX_WAIT_SECONDS
        )

    def Heartbeat(self, request: fpb.HeartbeatRequest, context: grpc.ServicerContext) -> fpb.HeartbeatResponse:
        client = self._client(request.session_id, context)
        try:
            client.transport.heartbeat(request.session_id)  # type: ignore[union-attr]
        except UnknownSession as err:
            serving.not_found(context, str(err))
        if not client.healthy and client.restore():
            log.info("reward client %s is back", client.name)
        return fpb.HeartbeatResponse()

    def FetchTasks(self, request: fpb.FetchTasksRequest, context: grpc.ServicerContext) -> fpb.FetchTasksResponse:
        if not (math.isfinite(request.wait_seconds) and 0 <= request.wait_seconds <= MAX_WAIT_SECONDS):
            serving.invalid(context, "wait_seconds", f"got {request.wait_seconds}, expected 0 to {MAX_WAIT_SECONDS}")
        if not 0 <= request.max_tasks <= MAX_TASKS:
            serving.invalid(context, "max_tasks", f"got {request.max_tasks}, expected 1 to {MAX_TASKS} (0: 16)")
        client = self._client(request.session_id, context)
        transport = client.transport
        poll = object()
        # Runs when the call ends, however it ends: a caller that went away frees the session's poll at once.
        context.add_callback(lambda: transport.cancel_poll(poll))  # type: ignore[union-attr]
        try:
            tasks = transport.fetch(  # type: ignore[union-attr]
                request.session_id, request.wait_seconds, request.max_tasks or 16, poll
            )
        except UnknownSession as err:
            serving.not_found(context, str(err))
        except AlreadyPolling as err:
            serving.refuse(context, grpc.StatusCode.RESOURCE_EXHAUSTED, str(err))
        return fpb.FetchTasksResponse(tasks=tasks)

    def SubmitRewards(
        self, request: fpb.SubmitRewardsRequest, context: grpc.ServicerContext
    ) -> fpb.SubmitRewardsResponse:
        if not request.task_id:
            serving.invalid(context, "task_id", "must not be empty")
        if len(request.error) > 1024:
            serving.invalid(context, "error", "at most 1024 characters")
        if request.error and request.rewards:
            serving.invalid(context, "rewards", "give rewards or error, not both")
        client = self._client(request.session_id, context)
        try:
            client.transport.submit(  # type: ignore[union-attr]
                request.session_id, request.task_id, list(request.rewards), request.error
            )
        except NotYourTask as err:
            log.warning("reward client %s answered a task it was not sent: %s", client.name, err)
            serving.refuse(context, grpc.StatusCode.PERMISSION_DENIED, str(err))
        except TaskClosed as err:
            serving.failed_precondition(context, str(err))
        except UnknownSession as err:
            serving.not_found(context, str(err))
        except ValueError as err:
            serving.invalid(context, "rewards", str(err).split(": ", 1)[-1])
        return fpb.SubmitRewardsResponse()

    # ---- parameter exchange (fedmoa, fedavg_lora) -------------------------------------------------------------------
    def _trainer(self, session_id: str, context: grpc.ServicerContext) -> RewardClient:
        client = self._client(session_id, context)
        if not client.transport.description.local_training:  # type: ignore[union-attr]
            serving.failed_precondition(context, "local_training: this client joined without local training; "
                                        "join with --local-training to take training rounds")
        return client

    def FetchRound(self, request: fpb.FetchRoundRequest, context: grpc.ServicerContext) -> fpb.FetchRoundResponse:
        if not (math.isfinite(request.wait_seconds) and 0 <= request.wait_seconds <= MAX_WAIT_SECONDS):
            serving.invalid(context, "wait_seconds", f"got {request.wait_seconds}, expected 0 to {MAX_WAIT_SECONDS}")
        client = self._trainer(request.session_id, context)
        with self._round_polls_lock:
            if client.name in self._round_polls:
                serving.refuse(context, grpc.StatusCode.RESOURCE_EXHAUSTED,
                               "FetchRound: this client already has a FetchRound waiting")
            self._round_polls.add(client.name)
        try:
            offered = self.exchange.fetch(client.name, request.wait_seconds)
        finally:
            with self._round_polls_lock:
                self._round_polls.discard(client.name)
        return fpb.FetchRoundResponse(round=offered) if offered is not None else fpb.FetchRoundResponse()

    def DownloadAdapter(self, request: fpb.DownloadAdapterRequest, context: grpc.ServicerContext):  # noqa: ANN201
        if not request.round_id:
            serving.invalid(context, "round_id", "must not be empty")
        client = self._trainer(request.session_id, context)
        try:
            yield from self.exchange.download(client.name, request.round_id)
        except RoundError as err:
            serving.refuse(context, err.code, str(err))

    def SubmitAdapter(self, request_iterator, context: grpc.ServicerContext) -> fpb.SubmitAdapterResponse:  # noqa: ANN001
        first = next(request_iterator, None)
        if first is None:
            serving.invalid(context, "header", "the stream is empty: send the header, then the chunks")
        client = self._trainer(first.session_id, context)
        requests = itertools.chain([first], request_iterator)
        try:
            self.exchange.receive(client.name, requests, first.session_id)
        except RoundError as err:
            if isinstance(err.code, grpc.StatusCode) and err.code == grpc.StatusCode.PERMISSION_DENIED:
                log.warning("reward client %s submitted an adapter for a round it was not sent: %s", client.name, err)
            serving.refuse(context, err.code, str(err))
        except BadAdapter as err:
            serving.invalid(context, str(err).split(":", 1)[0], str(err).split(": ", 1)[-1],
                            reason="BAD_ADAPTER")
        return fpb.SubmitAdapterResponse()

    def Leave(self, request: fpb.LeaveRequest, context: grpc.ServicerContext) -> fpb.LeaveResponse:
        client = self._client(request.session_id, context)
        self.clients.leave(client, "it left")
        return fpb.LeaveResponse()
