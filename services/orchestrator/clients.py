"""The reward clients the orchestrator knows, and scoring calls to them.

``RewardClients`` holds one channel per configured address, learns each
client's self-description (``Describe``) and keeps a health flag that a
background thread refreshes. ``score_questions`` fans every (question,
expert) call of a step out in parallel, each with a deadline, and returns the
rewards as an expert x candidate matrix per question in which anything
missing or invalid (timeout, error, wrong count, NaN, infinite, outside the
client's declared range) is NaN: excluded later, never counted as zero.
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
from fedgrpo.tasks import Question
from fedgrpo.v1 import reward_client_pb2 as pb
from fedgrpo.v1 import reward_client_pb2_grpc as pb_grpc

from .experts import ClientView

log = logging.getLogger(__name__)


@dataclass
class RewardClient:
    address: str
    stub: pb_grpc.RewardClientServiceStub
    name: str = ""
    domains: tuple[str, ...] = ()
    evaluator_kinds: tuple[int, ...] = ()
    reward_min: float = 0.0
    reward_max: float = 1.0
    healthy: bool = False
    failures: int = 0

    def view(self) -> ClientView:
        return ClientView(self.name or self.address, self.domains, self.healthy)


@dataclass
class ScoreOutcome:
    """Rewards of one question: rows[k][i] is expert k's reward for candidate i (NaN: excluded)."""

    experts: list[str]
    rows: list[list[float]]
    received: int = 0
    dropped: int = 0
    problems: list[str] = field(default_factory=list)


class RewardClients:
    def __init__(self, addresses: Sequence[str]) -> None:
        self.clients = [
            RewardClient(a, pb_grpc.RewardClientServiceStub(serving.channel(a))) for a in addresses
        ]
        self.pool = futures.ThreadPoolExecutor(max_workers=64, thread_name_prefix="score")
        self._stop = threading.Event()
        self._lock = threading.Lock()

    def describe(self, client: RewardClient, timeout: float = 5.0) -> bool:
        try:
            d = client.stub.Describe(pb.DescribeRequest(), timeout=timeout)
        except grpc.RpcError as err:
            if client.healthy:
                log.warning("reward client %s unreachable: %s", client.address, err.code().name)
            client.healthy = False
            return False
        if not (math.isfinite(d.reward_min) and math.isfinite(d.reward_max) and d.reward_min < d.reward_max):
            log.error("reward client %s declares an invalid reward range; ignored", client.address)
            client.healthy = False
            return False
        if not client.healthy:
            log.info("reward client %s is %s, domains %s", client.address, d.name, ",".join(d.domains))
        client.name, client.domains = d.name, tuple(d.domains)
        client.evaluator_kinds = tuple(d.evaluator_kinds)
        client.reward_min, client.reward_max = d.reward_min, d.reward_max
        client.healthy, client.failures = True, 0
        return True

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
            while not self._stop.wait(every):
                for c in self.clients:
                    if not c.healthy:
                        self.describe(c)

        threading.Thread(target=loop, name="client-health", daemon=True).start()

    def close(self) -> None:
        self._stop.set()
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
        """One expert's row of rewards, with the count dropped and why.

        Three unanswered calls in a row mark a client unhealthy (it leaves
        selection until it answers Describe again); probes do not count.
        """
        n = len(candidates)
        request = pb.ScoreRequest(
            question_id=question.question_id, question=question.text, domain=question.domain,
            candidates=candidates, run_id=run_id,
        )
        try:
            reply = client.stub.Score(request, timeout=timeout)
        except grpc.RpcError as err:
            if count_failures and err.code() == grpc.StatusCode.UNAVAILABLE and client.healthy:
                # Nobody listens any more: the client has left. It rejoins when Describe answers again.
                log.warning("reward client %s (%s) left: %s", client.name, client.address, err.details())
                client.healthy = False
            if count_failures and err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                client.failures += 1
                if client.failures >= 3 and client.healthy:
                    log.warning("reward client %s marked unhealthy after %d failures", client.address, client.failures)
                    client.healthy = False
            return [math.nan] * n, n, f"{client.name}: {err.code().name} {err.details()}"
        client.failures = 0
        if len(reply.rewards) != n:
            return [math.nan] * n, n, f"{client.name}: {len(reply.rewards)} rewards for {n} candidates"
        row, dropped = [], 0
        for r in reply.rewards:
            ok = math.isfinite(r) and client.reward_min <= r <= client.reward_max
            row.append(r if ok else math.nan)
            dropped += not ok
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
                outcome.dropped += dropped
                outcome.received += len(row) - dropped
                if problem:
                    outcome.problems.append(problem)
            outcomes.append(outcome)
        return outcomes
