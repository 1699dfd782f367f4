"""The reward clients the orchestrator knows, and scoring calls to them.

Two kinds of client reach the orchestrator. A *dialed* client listens at a
configured address and is called (``DialedTransport``: Describe and Score
RPCs). A *joined* client connected from elsewhere (``join``; see
``joined.JoinedTransport``): it fetches its tasks and is live while its
heartbeats arrive. ``RewardClients`` holds both, learns each client's
self-description and keeps a health flag that a background thread
refreshes (dialed: Describe again; joined: heartbeat age). With TLS a
dialed client counts only if the name it gives in Describe is the identity
in its certificate. A client that
misses three scoring deadlines in a row is *benched*: it stays out of
selection for ``bench_seconds`` (doubling on each repeat, up to 16x) even
though it still answers Describe or heartbeats, since answering those says
nothing about scoring in time; its first answered Score ends the doubling.
``score_questions`` fans every (question,
expert) call of a step out in parallel, each with a deadline, and returns the
rewards as an expert x candidate matrix per question in which anything
missing or invalid (timeout, error, wrong count, NaN, infinite, outside the
client's declared range) is NaN: excluded later, never counted as zero. Valid
rewards leave here on the federation's scale [0, 1], mapped linearly from the
range the client declared (``reward_scale``), so no client outweighs another
by what it declares.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Collection, Sequence
from concurrent import futures
from dataclasses import dataclass, field

import grpc

from fedgrpo import serving
from fedgrpo.observability import CLIENTS_LIVE, JOINS
from fedgrpo.security import Identity, server_identity
from fedgrpo.tasks import Question
from fedgrpo.v1 import reward_client_pb2 as pb
from fedgrpo.v1 import reward_client_pb2_grpc as pb_grpc

from .experts import ClientView
from .join_work import JoinWork
from .joined import JoinedTransport, ScoreError
from .reward_scale import normalised_row

log = logging.getLogger(__name__)


class DialedTransport:
    """A reward client listening at an address: plain Describe and Score RPCs."""

    def __init__(self, address: str, identity: Identity | None = None) -> None:
        self.stub = pb_grpc.RewardClientServiceStub(serving.channel(address, identity))

    def describe(self, timeout: float) -> pb.DescribeResponse:
        return self.stub.Describe(pb.DescribeRequest(), timeout=timeout)

    def score(self, request: pb.ScoreRequest, timeout: float) -> pb.ScoreResponse:
        return self.stub.Score(request, timeout=timeout)


@dataclass
class RewardClient:
    address: str
    transport: DialedTransport | JoinedTransport
    name: str = ""
    domains: tuple[str, ...] = ()
    evaluator_kinds: tuple[int, ...] = ()
    reward_min: float = 0.0
    reward_max: float = 1.0
    healthy: bool = False
    failures: int = 0
    # Out of selection until this time.monotonic(), after missed scoring deadlines; 0: not benched.
    benched_until: float = 0.0
    # Length of the last bench (0: none since the last answered Score); the next one is twice as long.
    last_bench: float = 0.0

    def view(self) -> ClientView:
        return ClientView(self.name or self.address, self.domains, self.healthy, self.evaluator_kinds)

    @property
    def joined(self) -> bool:
        return isinstance(self.transport, JoinedTransport)

    def benched(self) -> bool:
        return time.monotonic() < self.benched_until

    def bench(self, base_seconds: float) -> float:
        """Take the client out of selection after missed deadlines; returns how long for."""
        self.last_bench = min(16 * base_seconds, 2 * self.last_bench) if self.last_bench else base_seconds
        self.benched_until = time.monotonic() + self.last_bench
        self.healthy = False
        return self.last_bench

    def restore(self) -> bool:
        """Mark the client live again (it answered Describe, joined or beat), unless it is benched."""
        if self.benched():
            return False
        self.healthy, self.failures = True, 0
        return True

    def learn(self, d: pb.DescribeResponse) -> None:
        self.name, self.domains = d.name, tuple(d.domains)
        self.evaluator_kinds = tuple(d.evaluator_kinds)
        self.reward_min, self.reward_max = d.reward_min, d.reward_max


def declares_a_range(d: pb.DescribeResponse) -> bool:
    """A client's declared reward range is usable: finite and non-empty."""
    return math.isfinite(d.reward_min) and math.isfinite(d.reward_max) and d.reward_min < d.reward_max


class Problem(str):
    """Why rewards were dropped; ``code`` is the gRPC status when the call itself failed."""

    code: grpc.StatusCode | None = None

    @classmethod
    def failed(cls, text: str, code: grpc.StatusCode) -> Problem:
        problem = cls(text)
        problem.code = code
        return problem


@dataclass
class ScoreOutcome:
    """Rewards of one question: rows[k][i] is expert k's reward for candidate i (NaN: excluded)."""

    experts: list[str]
    rows: list[list[float]]
    # codes[k]: the status of expert k's call when it failed, else None.
    codes: list[grpc.StatusCode | None] = field(default_factory=list)
    received: int = 0
    dropped: int = 0
    problems: list[str] = field(default_factory=list)


class RewardClients:
    def __init__(
        self, addresses: Sequence[str], identity: Identity | None = None, heartbeat_timeout: float = 15.0,
        bench_seconds: float = 60.0, max_open_tasks: int = 32,
    ) -> None:
        self.clients = [RewardClient(a, DialedTransport(a, identity)) for a in addresses]
        self.identity = identity
        # Dialed clients whose Describe name their certificate does not carry: address -> why (logged once).
        self.refused: dict[str, str] = {}
        self.heartbeat_timeout = heartbeat_timeout
        self.bench_seconds = bench_seconds
        self.on_join: list = []  # callbacks(client) run on the join-work thread after a new or changed join
        self.join_work = JoinWork(self.on_join)
        self.max_open_tasks = max_open_tasks
        self.pool = futures.ThreadPoolExecutor(max_workers=64, thread_name_prefix="score")
        self._stop = threading.Event()
        self._lock = threading.Lock()

    def describe(self, client: RewardClient, timeout: float = 5.0) -> bool:
        if client.joined:
            return client.healthy
        try:
            d = client.transport.describe(timeout)
        except (grpc.RpcError, ScoreError) as err:
            if client.healthy:
                log.warning("reward client %s unreachable: %s", client.address, err.code().name)
            client.healthy = False
            return False
        if not declares_a_range(d):
            log.error("reward client %s declares an invalid reward range; ignored", client.address)
            client.healthy = False
            return False
        if not self._certificate_names(client, d.name, timeout):
            client.healthy = False
            return False
        was_healthy = client.healthy
        client.learn(d)
        if not client.restore():
            return False
        if not was_healthy:
            log.info("reward client %s is %s, domains %s", client.address, d.name, ",".join(d.domains))
        return True

    def _certificate_names(self, client: RewardClient, name: str, timeout: float) -> bool:
        """With TLS, a dialed client's Describe name must be its certificate's identity (else it could pose as
        another member); refused clients stay out of selection, logged once per address and reason."""
        if self.identity is None:
            return True
        try:
            holder = server_identity(client.address, self.identity, timeout)
        except (OSError, ValueError) as err:  # ssl.SSLError is an OSError
            holder, why = None, f"its certificate could not be read ({err})"
        else:
            why = f"its certificate's identity is {holder!r}"
        if holder == name:
            self.refused.pop(client.address, None)
            return True
        if self.refused.get(client.address) != why:
            log.error("reward client %s refused: it names itself %r in Describe but %s; it stays out of selection "
                      "until the two agree", client.address, name, why)
        self.refused[client.address] = why
        return False

    # ---- joined clients ----------------------------------------------------
    def join(self, identity: str, d: pb.DescribeResponse, peer: str) -> tuple[RewardClient, str]:
        """Admit (or take back) a joined client; returns it and its new session id.

        Raises ValueError (the description is unusable) or KeyError (the
        name belongs to a dialed client).
        """
        if not declares_a_range(d):
            raise ValueError(f"description.reward_min/reward_max: [{d.reward_min}, {d.reward_max}] is not a range")
        with self._lock:
            client = self.by_name().get(identity)
            if client is not None and not client.joined:
                raise KeyError(f"description.name: {identity!r} is a reward client this orchestrator dials")
            if client is None:
                client = RewardClient(peer, JoinedTransport(identity, self.heartbeat_timeout, self.max_open_tasks))
                client.name = identity
                self.clients.append(client)
            client.address = peer
        # A rejoin with the description of the session before (this process's) changes nothing worth a store
        # write or a probe; a client known only from the store has no description yet, so its first join counts.
        unchanged = client.transport.description == d  # type: ignore[union-attr]
        session = client.transport.start_session(d)  # type: ignore[union-attr]
        client.learn(d)
        client.name = identity
        if client.restore():
            log.info("reward client %s joined from %s (domains %s)", identity, peer, ",".join(d.domains) or "none")
        else:
            log.info("reward client %s joined from %s but is benched for %.0fs more after missed deadlines",
                     identity, peer, client.benched_until - time.monotonic())
        JOINS.labels("unchanged" if unchanged else "changed").inc()
        if not unchanged:  # store write and probing: one thread for all joins, never the scoring pool
            self.join_work.submit(client)
        return client, session

    def known_joined(self, members: dict[str, dict]) -> None:
        """List the joined clients of an earlier life (from the store) as not live until they join again."""
        for name, info in members.items():
            if name in self.by_name():
                continue
            client = RewardClient(
                info.get("address", ""), JoinedTransport(name, self.heartbeat_timeout, self.max_open_tasks)
            )
            client.learn(pb.DescribeResponse(
                name=name, domains=info.get("domains", []), evaluator_kinds=info.get("evaluator_kinds", []),
                reward_min=info.get("reward_min", 0.0), reward_max=info.get("reward_max", 1.0),
            ))
            self.clients.append(client)

    @staticmethod
    def member_record(client: RewardClient) -> dict:
        """What the store keeps of a joined client (its self-description and last address)."""
        return {
            "address": client.address, "domains": list(client.domains), "evaluator_kinds": list(client.evaluator_kinds),
            "reward_min": client.reward_min, "reward_max": client.reward_max,
        }

    def leave(self, client: RewardClient, why: str) -> None:
        if client.joined:
            failed = client.transport.end_session(why)  # type: ignore[union-attr]
            if client.healthy:
                log.warning("reward client %s left (%s); %d open task(s) go to other experts", client.name, why, failed)
            client.healthy = False

    def joined_client(self, name: str) -> RewardClient | None:
        client = self.by_name().get(name)
        return client if client is not None and client.joined else None

    def wait_for_all(self, timeout: float) -> None:
        """Describe every client, retrying for up to ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            pending = [c for c in self.clients if not c.healthy and not self.describe(c)]
            if not pending or time.monotonic() >= deadline:
                break
            time.sleep(0.5)
        for c in self.clients:
            if not c.healthy:
                log.warning("reward client %s did not answer; it joins when it does", c.address)
        names = [c.name for c in self.clients if c.healthy]
        if len(names) != len(set(names)):
            raise SystemExit(f"fedgrpo orchestrator: two reward clients share a name: {names}")

    def start_health_checks(self, every: float = 5.0) -> None:
        def loop() -> None:
            while not self._stop.wait(min(every, self.heartbeat_timeout / 3)):
                for c in list(self.clients):
                    if c.joined:
                        if c.transport.expired():  # type: ignore[union-attr]
                            self.leave(c, f"no heartbeat for {self.heartbeat_timeout:.0f}s")
                    elif not c.healthy:
                        self.describe(c)
                CLIENTS_LIVE.set(self.live_count())

        threading.Thread(target=loop, name="client-health", daemon=True).start()

    def close(self) -> None:
        self._stop.set()
        self.join_work.close()
        self.pool.shutdown(wait=False, cancel_futures=True)

    def usable(self, names: Collection[str] = ()) -> list[RewardClient]:
        """The clients a run may use: those named, or all when ``names`` is empty."""
        return [c for c in self.clients if not names or c.view().name in names]

    def views(self, names: Collection[str] = ()) -> list[ClientView]:
        return [c.view() for c in self.usable(names)]

    def by_name(self) -> dict[str, RewardClient]:
        return {c.view().name: c for c in self.clients}

    def live_count(self) -> int:
        return sum(c.healthy for c in self.clients)

    # ---- scoring -----------------------------------------------------------
    def score_one(
        self, client: RewardClient, run_id: str, question: Question, candidates: list[str], timeout: float,
        count_failures: bool = True,
    ) -> tuple[list[float], int, str | None]:
        """One expert's row of rewards on the federation's scale, with the count dropped and why.

        Valid rewards are mapped from the client's declared range onto [0, 1]
        (``reward_scale.normalised_row``); anything else is NaN.

        Three unanswered calls in a row bench a client (it leaves selection
        for a while; see the module docstring); probes do not count.
        """
        n = len(candidates)
        request = pb.ScoreRequest(
            question_id=question.question_id, question=question.text, domain=question.domain,
            candidates=candidates, run_id=run_id,
        )
        try:
            reply = client.transport.score(request, timeout)
        except (grpc.RpcError, ScoreError) as err:
            if count_failures and err.code() == grpc.StatusCode.UNAVAILABLE and client.healthy and not client.joined:
                # Nobody listens any more: the client has left. It rejoins when Describe answers again.
                log.warning("reward client %s (%s) left: %s", client.name, client.address, err.details())
                client.healthy = False
            if count_failures and err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                client.failures += 1
                if client.failures >= 3 and client.healthy:
                    seconds = client.bench(self.bench_seconds)
                    log.warning("reward client %s missed %d scoring deadlines in a row: out of selection for %.0fs",
                                client.name or client.address, client.failures, seconds)
            return [math.nan] * n, n, Problem.failed(f"{client.name}: {err.code().name} {err.details()}", err.code())
        client.failures, client.last_bench = 0, 0.0
        if n and len(reply.rewards) == n and all(math.isnan(r) for r in reply.rewards):
            # NaN for every candidate is how a client says it cannot judge the question (like NOT_FOUND).
            return [math.nan] * n, n, Problem.failed(f"{client.name}: cannot judge (NaN for every candidate)",
                                                     grpc.StatusCode.NOT_FOUND)
        if len(reply.rewards) != n:
            return [math.nan] * n, n, f"{client.name}: {len(reply.rewards)} rewards for {n} candidates"
        # On the federation's scale [0, 1] from here on: a declared range buys no weight (reward_scale).
        row, dropped = normalised_row(reply.rewards, client.reward_min, client.reward_max)
        problem = (
            f"{client.name}: {dropped} reward(s) NaN, infinite or outside "
            f"[{client.reward_min}, {client.reward_max}]" if dropped else None
        )
        return row, dropped, problem

    def score_questions(
        self,
        run_id: str,
        questions: Sequence[Question],
        candidates: Sequence[list[list[str]]],
        experts: Sequence[list[str]],
        timeout: float,
    ) -> list[ScoreOutcome]:
        """Score with every question's experts, all calls in parallel.

        ``candidates[q][k]`` are the candidates expert ``experts[q][k]`` scores:
        all of the question's under the consensus reading, its own block under
        the pooled one.
        """
        clients = self.by_name()
        calls = {}
        for qi, (q, per_expert, names) in enumerate(zip(questions, candidates, experts)):
            for name, cands in zip(names, per_expert):
                calls[(qi, name)] = self.pool.submit(self.score_one, clients[name], run_id, q, cands, timeout)
        outcomes = []
        for qi, names in enumerate(experts):
            outcome = ScoreOutcome(experts=list(names), rows=[])
            for name in names:
                row, dropped, problem = calls[(qi, name)].result()
                outcome.rows.append(row)
                outcome.codes.append(getattr(problem, "code", None))
                outcome.dropped += dropped
                outcome.received += len(row) - dropped
                if problem:
                    outcome.problems.append(problem)
            outcomes.append(outcome)
        return outcomes
