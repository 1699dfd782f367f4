"""The training loop of one run, step by step.

One question's path: sample question -> rollouts (engine, stamped with the
policy version) -> experts (``select``) -> rewards (parallel scoring calls)
-> advantages (group-relative, missing rewards excluded) -> update (trainer)
-> new weights (engine reloads the snapshot). ``RunExecutor`` runs queued
runs one at a time on a worker thread and records every step in the store.

Generation and training overlap (the run's ``max_async_level`` k): a step's
rollouts are collected (``_collect``) on the run's thread while the steps
before it train on the training lane (``training_lane``), in order. Before
collecting step n the loop waits until every step up to n - 1 - k is
recorded, so the rollouts come from a policy at most k versions behind the
one trained on them (``StepMetrics.policy_lag``; the trainer refuses more,
and its ratio uses the sampler's log-probabilities). k = 0 is synchronous:
collect, train, in turn.

Nothing is lost to a crash. Before a batch goes to the trainer it is written
to the store (write-ahead), and every accepted reward to the ledger. A
trainer that restarted from an older checkpoint is brought back by replaying
the batches it lost, in order (``trainer_link``); the trainer applies a
step at most once, so a retried or replayed step is never applied twice. An
orchestrator that restarted resumes its interrupted runs (``resume_interrupted``):
the pending step is trained from its logged batch, vLLM is brought to the
trainer's latest policy version, and the run goes on from the next step.
Calls to an unreachable trainer are retried with jittered backoff for up to
``trainer_retry_seconds``.
"""

from __future__ import annotations

import logging
import math
import queue
import random
import shutil
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from fedgrpo import observability as obs
from fedgrpo.advantage_bound import clamped
from fedgrpo.models import chat_prompt_ids, save_snapshot
from fedgrpo.models.adapters import is_adapter, merged
from fedgrpo.serving import retry_backoff
from fedgrpo.tasks import Question
from fedgrpo.v1 import common_pb2
from fedgrpo.v1 import orchestrator_pb2 as pb
from fedgrpo.v1 import policy_trainer_pb2 as tpb
from fedgrpo.v1 import policy_trainer_pb2_grpc as tpb_grpc

from . import recovery
from .advantages import question_advantages
from .batch import train_sequences
from .clients import RewardClients
from .experts import ClientView, select_experts
from .fedmoa.exchange import AdapterExchange
from .fedmoa.run import ParameterExchangeRun, dataset_prompt
from .online_confidence import RunConfidence
from .policy_weights import shared_weights
from .probes import LiveRun
from .questions import QuestionBank
from .reward_scale import CORRECT_THRESHOLD
from .rollout import RolloutEngine, SamplingSettings
from .routing import ExpertRouter
from .runs import RunCancelled, RunStore, now
from .spec import RunConfig, optimizer_settings, stored_config
from .trainer_link import TrainerLink
from .training_lane import TrainingLane

log = logging.getLogger(__name__)

Selector = Callable[[str, Sequence[ClientView], int], list[str]]


def routing_precision(
    questions: Sequence[Question], experts: Sequence[list[str]], views: Sequence[ClientView]
) -> float:
    """Fraction of questions whose experts include a client declaring the question's domain."""
    domains = {v.name: set(v.domains) for v in views}
    hits = sum(any(q.domain in domains.get(name, ()) for name in names) for q, names in zip(questions, experts))
    return hits / len(questions) if questions else math.nan



@dataclass
class Policy:
    """The engine: what it has loaded, behind one lock shared with Generate."""

    engine: RolloutEngine
    tokenizer: object
    base_dir: Path
    lock: threading.Lock
    loaded: common_pb2.PolicyVersion
    # A version's local folder: the trainer's own (shared storage) or a copy streamed from it (policy_weights).
    weights: Callable[[common_pb2.PolicyVersion], Path] = shared_weights

    def prompt_ids(self, text: str, system: str | None = None, raw: bool = False) -> list[int]:
        if raw:
            return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])  # type: ignore[operator]
        return chat_prompt_ids(self.tokenizer, text, system)

    def load(self, version: common_pb2.PolicyVersion) -> float:
        """Bring the engine to ``version``; returns the seconds it took (0 if current)."""
        if (version.run_id, version.version) == (self.loaded.run_id, self.loaded.version) or (
            version.version == 0 and self.loaded.version == 0
        ):
            self.loaded.CopyFrom(version)
            return 0.0
        started = time.monotonic()
        self.engine.load_weights(self.weights(version))
        self.loaded.CopyFrom(version)
        return time.monotonic() - started


class RunExecutor:
    def __init__(
        self,
        store: RunStore,
        clients: RewardClients,
        policy: Policy,
        trainer: tpb_grpc.PolicyTrainerServiceStub,
        bank: QuestionBank,
        router: ExpertRouter | None = None,
        select: Selector = select_experts,
        trainer_retry_seconds: float = 600.0,
        client_wait_seconds: float = 120.0,
        exchange: AdapterExchange | None = None,
    ) -> None:
        self.store, self.clients, self.policy = store, clients, policy
        self.bank, self.router, self.select = bank, router, select
        self.link = TrainerLink(trainer, store, trainer_retry_seconds)
        self.client_wait_seconds = client_wait_seconds
        self.exchange = exchange if exchange is not None else AdapterExchange()
        self.configs: dict[str, RunConfig] = {}
        # The online confidence of the run executing now (runs execute one at a time): its own,
        # started from the probed graph for each run and never written back into the graph.
        self.confidence = RunConfidence()
        self.resuming: set[str] = set()
        self.active: str | None = None  # the run executing now: the engine is its, Generate may not swap it
        self.queue: queue.Queue[str | None] = queue.Queue()
        self.thread = threading.Thread(target=self._work, name="runs", daemon=True)
        self.thread.start()

    def submit(self, run_id: str, config: RunConfig) -> None:
        self.configs[run_id] = config
        self.queue.put(run_id)
        obs.QUEUE_DEPTH.labels("runs").set(self.queue.qsize())

    def resume_interrupted(self) -> list[str]:
        """Queue again the runs a restart interrupted: running ones first, to go on where they stopped."""
        resumed = []
        for run in self.store.interrupted():
            if run.state == pb.RUN_STATE_RUNNING:
                self.resuming.add(run.run_id)
            log.warning("run %s was %s when the orchestrator stopped: resuming it after step %d",
                        run.run_id, pb.RunState.Name(run.state), run.steps_completed)
            self.submit(run.run_id, stored_config(run.spec))
            resumed.append(run.run_id)
        return resumed

    def stop(self) -> None:
        self.queue.put(None)

    def _work(self) -> None:
        while (run_id := self.queue.get()) is not None:
            obs.QUEUE_DEPTH.labels("runs").set(self.queue.qsize())
            run = self.store.get(run_id)
            resume = run_id in self.resuming
            if run is None or (run.state != pb.RUN_STATE_QUEUED and not resume):
                continue  # cancelled while queued
            with self.policy.lock:  # a Generate for another policy checks this under the same lock
                self.active = run_id
            if not resume:
                self.store.update(run_id, state=pb.RUN_STATE_RUNNING, start_time=now())
            if self.router is not None:  # probes made while it runs carry its id and candidate count
                self.router.live = LiveRun(run_id, self.configs[run_id].candidates_per_question)
            try:
                self._execute(run_id, self.configs[run_id], resume)
                self.store.update(run_id, state=pb.RUN_STATE_SUCCEEDED, end_time=now())
            except RunCancelled:
                self.store.update(run_id, state=pb.RUN_STATE_CANCELLED, end_time=now())
            except grpc.RpcError as err:
                log.exception("run %s failed", run_id)
                self.store.update(
                    run_id, state=pb.RUN_STATE_FAILED, end_time=now(),
                    error=f"trainer call failed: {err.code().name}: {err.details()}",
                )
            except Exception as err:  # a run must end with a state, whatever broke
                log.exception("run %s failed", run_id)
                self.store.update(
                    run_id, state=pb.RUN_STATE_FAILED, end_time=now(), error=f"{type(err).__name__}: {err}"
                )
            finally:
                self.active = None
                if self.router is not None:
                    self.router.live = None

    # ---- one run -----------------------------------------------------------
    def _execute(self, run_id: str, cfg: RunConfig, resume: bool = False) -> None:
        if cfg.exchanges_parameters:
            self._exchange_parameters(run_id, cfg, resume)
            return
        version = self.link.start(run_id, optimizer_settings(cfg))
        pending = self.store.pending_step(run_id) if resume else None
        if pending is not None:
            # Interrupted between logging the batch and recording the step: finish that step.
            metrics = pb.StepMetrics()
            metrics.CopyFrom(pending.partial)
            if pending.batch is not None:
                batch = tpb.TrainBatch.FromString(pending.batch)
                reply = self.link.train(batch)
                self._train_figures(metrics, batch, reply)
                version = reply.policy
            metrics.steps_replayed += self.link.take_replayed()
            self.store.add_step(run_id, metrics, version)
            log.warning("run %s: step %d finished from its logged batch after the restart", run_id, pending.step)
        with self.policy.lock:
            self.policy.load(version)
        obs.POLICY_VERSION.set(version.version)
        self.store.update(run_id, policy=version)
        if self.router is not None:
            last = self.store.last_step(run_id)  # a resumed run goes on with its own confidence
            self.confidence = RunConfidence(
                self.router.probed_confidence(), last.confidence_by_client if last else None
            )
        done = self.store.completed_steps(run_id)
        last_done = done[-1] if done else 0
        if resume and (abandoned := self.store.ledger.forget_after(run_id, last_done)):
            log.warning("run %s: %d rewards of steps after %d came from a scoring the restart abandoned: "
                        "dropped from the ledger, those steps are scored again", run_id, abandoned, last_done)
        self.resuming.discard(run_id)
        lane = TrainingLane(
            lambda m, batch, current, since: self._train_and_record(run_id, cfg, m, batch, current, since), version
        )
        try:
            for step in range(last_done + 1, cfg.steps + 1):
                if self.store.cancel_requested(run_id):
                    raise RunCancelled()
                # The rollouts of this step may come from a policy at most max_async_level versions behind
                # the one that trains on them: every step up to step - 1 - max_async_level is trained first.
                version = lane.wait_through(step - 1 - cfg.max_async_level)
                metrics, batch = self._collect(run_id, cfg, step, version)
                lane.submit(metrics, batch)
            version = lane.wait_through(cfg.steps)
        finally:
            lane.close()  # a cancelled or failed run still records the steps it already sent to the trainer
        with self.policy.lock:  # the engine serves the run's final policy (Generate, evaluation)
            self.policy.load(version)
        self._export_model(run_id, version)
        if self.router is not None:
            self.router.export(self.store.run_dir(run_id), self.confidence.values,
                               with_router=cfg.reward_fusion == "router", clients=cfg.reward_clients)

    def _exchange_parameters(self, run_id: str, cfg: RunConfig, resume: bool) -> None:
        """A fedmoa or fedavg_lora run: the clients train, the server combines (``fedmoa/run.py``)."""
        self.resuming.discard(run_id)
        runner = ParameterExchangeRun(
            self.store, self.clients, self.policy, self.exchange, self.router.items if self.router else [],
            self.client_wait_seconds, lambda: self.store.cancel_requested(run_id), dataset_prompt(self.bank),
        )
        version = runner.execute(run_id, cfg, resume)
        self._export_model(run_id, version, Path(version.weights_path))

    def _collect(
        self, run_id: str, cfg: RunConfig, step: int, version: common_pb2.PolicyVersion
    ) -> tuple[pb.StepMetrics, tpb.TrainBatch | None]:
        """One step up to its batch: questions, rollouts from ``version``, experts, rewards, advantages.
        Returns the step's metrics so far and its batch (None when nothing is left to train on)."""
        m = pb.StepMetrics(step=step, policy_version=version.version)

        # question -> rollout
        questions = self.bank.sample(cfg.tasks, step, cfg.questions_per_step, cfg.seed, cfg.dataset)
        prompts = [self.policy.prompt_ids(*self.bank.prompt(q, cfg.dataset)) for q in questions]
        sampling = SamplingSettings(
            cfg.samples_per_question, cfg.temperature, cfg.top_p, cfg.max_tokens,
            seed=SamplingSettings.step_seed(cfg.seed, step),  # (seed, step) alone: resumes sample alike
        )
        t = time.monotonic()
        with self.policy.lock:
            m.sync_seconds += self.policy.load(version)
            groups = self.policy.engine.generate(prompts, sampling)
        m.generate_seconds = time.monotonic() - t - m.sync_seconds

        # -> experts -> rewards
        t = time.monotonic()
        views = self._live_views(run_id, cfg)
        chosen = self._experts(cfg, step, questions, views)
        experts = [[name for name, _ in c] for c in chosen]
        weights = [[w for _, w in c] for c in chosen]
        m.routing_precision = routing_precision(questions, experts, views)
        texts = [self._assign(cfg, [c.text for c in g], names) for g, names in zip(groups, experts)]
        outcomes = self.clients.score_questions(run_id, questions, texts, experts, cfg.reward_timeout_seconds)
        m.experts_replaced, m.score_retries = self._recover_missing(
            run_id, cfg, step, questions, groups, outcomes, weights
        )
        m.questions_below_quorum = self._apply_quorum(cfg, outcomes)
        weights = self._fusion_weights(cfg, questions, outcomes, weights, m)
        for q, outcome in zip(questions, outcomes):
            for name, row in zip(outcome.experts, outcome.rows):
                accepted = sum(not math.isnan(r) for r in row)
                if accepted:
                    self.store.ledger.record(run_id, step, q.question_id, name, row)
                    m.rewards_by_client[name] += accepted
                obs.REWARDS.labels(name, "accepted").inc(accepted)
                obs.REWARDS.labels(name, "dropped").inc(len(row) - accepted)
        m.score_seconds = time.monotonic() - t

        # -> advantages
        for q, outcome in zip(questions, outcomes):
            for problem in outcome.problems:
                log.warning("run %s step %d question %s: dropped rewards: %s", run_id, step, q.question_id, problem)
            m.rewards_received += outcome.received
            m.rewards_dropped += outcome.dropped
        rows = [self._rows(cfg, o.rows, len(g)) for o, g in zip(outcomes, groups)]
        readings = []
        for r, g, w in zip(rows, groups, weights):
            rewards_q, advantages_q = question_advantages(r, cfg.reward_reading, cfg.scale, len(g), weights=w)
            advantages_q, clamped_q = clamped(advantages_q, cfg.max_advantage)
            readings.append((rewards_q, advantages_q))
            m.advantages_clamped += clamped_q
        if m.advantages_clamped:
            log.warning("run %s step %d: %d advantage(s) clamped to +-%g", run_id, step, m.advantages_clamped,
                        cfg.max_advantage)
        threshold = CORRECT_THRESHOLD  # rewards are on the federation's scale (reward_scale)
        rewards = [r for candidate_rewards, _ in readings for r in candidate_rewards if not math.isnan(r)]
        correct = sum(r >= threshold for r in rewards)
        sequences, m.zero_advantage_groups = train_sequences(
            prompts, groups, [a for _, a in readings], cfg.zero_signal_groups
        )
        if self.router is not None and cfg.expert_selection == "confidence_graph":
            if cfg.confidence_update_rate > 0 and cfg.reward_reading == "consensus":
                moved = self.confidence.update(
                    [o.experts for o in outcomes], rows, weights, threshold, cfg.confidence_update_rate
                )
                if moved:
                    log.info("run %s step %d: confidence %s", run_id, step, moved)
            m.confidence_by_client.update(self.confidence.of(cfg.reward_clients))
        m.questions = len(questions)
        m.completions = sum(len(g) for g in groups)
        m.completion_tokens_mean = statistics.fmean(len(s.token_ids) for g in groups for s in g)
        m.reward_mean = statistics.fmean(rewards) if rewards else math.nan
        m.reward_std = statistics.pstdev(rewards) if rewards else math.nan
        m.accuracy = correct / len(rewards) if rewards else math.nan

        batch = tpb.TrainBatch(
            run_id=run_id, step=step, policy_version=version.version, sequences=sequences,
            max_completion_tokens=cfg.max_tokens,
        ) if sequences else None
        m.open_tasks = sum(c.transport.pending() for c in self.clients.clients if c.joined)  # type: ignore[union-attr]
        obs.QUEUE_DEPTH.labels("tasks").set(m.open_tasks)
        return m, batch

    def _train_and_record(
        self, run_id: str, cfg: RunConfig, m: pb.StepMetrics, batch: tpb.TrainBatch | None,
        version: common_pb2.PolicyVersion, since: float,
    ) -> common_pb2.PolicyVersion:
        """Log the step's batch (write-ahead), train it, record the step; returns the policy it produced.
        ``since``: when the previous step was recorded (a step's wall time runs from there)."""
        step = m.step
        self.store.begin_step(run_id, step, batch.SerializeToString() if batch else None, m)
        if batch is not None:
            t = time.monotonic()
            reply = self.link.train(batch)
            m.train_seconds = time.monotonic() - t
            self._train_figures(m, batch, reply)
            version = reply.policy
        else:
            log.info("run %s step %d: nothing to train on (no judged candidate, or zero_signal_groups=drop "
                     "and no group had signal); policy unchanged", run_id, step)
        m.steps_replayed = self.link.take_replayed()
        m.step_seconds = time.monotonic() - since
        m.queued_runs = self.queue.qsize()
        self.store.add_step(run_id, m, version)
        obs.STEPS.labels("completed").inc()
        obs.POLICY_VERSION.set(version.version)
        for phase in ("generate", "score", "train", "sync", "step"):
            obs.STEP_PHASE_SECONDS.labels(phase).observe(getattr(m, f"{phase}_seconds"))
        log.info(
            "run %s step %d/%d: reward %.3f acc %.3f loss %.4f v%d lag %d "
            "(%.1fs: gen %.1f score %.1f train %.1f sync %.1f)",
            run_id, step, cfg.steps, m.reward_mean, m.accuracy, m.loss, version.version, m.policy_lag,
            m.step_seconds, m.generate_seconds, m.score_seconds, m.train_seconds, m.sync_seconds,
            extra={  # the step's figures as fields of a --log-format json line
                "run_id": run_id, "step": step, "policy_version": version.version, "policy_lag": m.policy_lag,
                "reward_mean": m.reward_mean, "rewards_received": m.rewards_received,
                "rewards_dropped": m.rewards_dropped, "experts_replaced": m.experts_replaced,
                "steps_replayed": m.steps_replayed, "step_seconds": m.step_seconds,
                "rewards_by_client": dict(m.rewards_by_client),
            },
        )
        return version

    @staticmethod
    def _train_figures(m: pb.StepMetrics, batch: tpb.TrainBatch, reply: tpb.TrainResponse) -> None:
        m.loss, m.kl, m.clip_ratio = reply.metrics.loss, reply.metrics.kl, reply.metrics.clip_ratio
        m.grad_norm = reply.metrics.grad_norm
        # Versions between the policy that sampled the batch and the one it was applied to.
        m.policy_lag = reply.policy.version - 1 - batch.policy_version

    def _experts(
        self, cfg: RunConfig, step: int, questions: Sequence[Question], views: Sequence[ClientView],
    ) -> list[list[tuple[str, float]]]:
        """Each question's experts with their consensus weight (competence; 1.0 when not graph-routed)."""
        return self._ranked(cfg, step, questions, views, cfg.experts_per_question)

    def _fusion_weights(
        self, cfg: RunConfig, questions: Sequence[Question], outcomes: Sequence, weights: list[list[float]],
        m: pb.StepMetrics,
    ) -> list[list[float]]:
        """The consensus weights of each question's experts (as they stand after recovery) by the run's
        ``reward_fusion``: their selection weights (competence), equal, or the router's."""
        if cfg.reward_fusion == "mean":
            return [[1.0] * len(o.experts) for o in outcomes]
        if cfg.reward_fusion != "router":
            return weights
        assert self.router is not None  # resolve_spec refuses router fusion without the graph
        fused = self.router.fusion_weights(questions, [list(o.experts) for o in outcomes], cfg.reward_clients)
        per_client: dict[str, list[float]] = {}
        for o, ws in zip(outcomes, fused):
            for name, w in zip(o.experts, ws):
                per_client.setdefault(name, []).append(w)
        for name, ws in per_client.items():
            m.router_weight_by_client[name] = statistics.fmean(ws)
        return fused

    def _ranked(
        self, cfg: RunConfig, step: int, questions: Sequence[Question], views: Sequence[ClientView], m: int,
        replacing: bool = False,
    ) -> list[list[tuple[str, float]]]:
        """Each question's first ``m`` live clients among ``views`` in the selection's order, with their weight.

        ``replacing``: the ranking replacements are taken from (random selection: a random order).
        """
        live = sorted(v.name for v in views if v.healthy)
        if cfg.expert_selection == "confidence_graph" and self.router is not None:
            if not live:  # an empty allowed set would mean "anyone" to the router
                return [[] for _ in questions]
            return self.router.select(questions, m, live, self.confidence.values)
        if cfg.expert_selection == "random":
            if replacing:  # a ranking of everyone: a random order
                rng = random.Random(f"{cfg.seed}:{step}:replacements")
                return [[(n, 1.0) for n in rng.sample(live, len(live))] for _ in questions]
            rng = random.Random(f"{cfg.seed}:{step}:experts:0")
            return [[(n, 1.0) for n in sorted(rng.sample(live, min(m, len(live))))] for _ in questions]
        if cfg.expert_selection == "all":
            return [[(n, 1.0) for n in live] for _ in questions]
        return [[(n, 1.0) for n in self.select(q.domain, views, m)] for q in questions]

    def _recover_missing(
        self, run_id: str, cfg: RunConfig, step: int, questions: Sequence[Question], groups: Sequence,
        outcomes: list, weights: list[list[float]],
    ) -> tuple[int, int]:
        """Ask again wherever an expert's call failed (rules in ``recovery``); returns (replaced, retried).

        Rows are replaced in place (rewards, name and weight); with nobody
        left to ask, a row stays missing (excluded) and the quorum decides.
        """
        replaced = retried = 0
        asked_again: set[tuple[int, str]] = set()
        failed: list[set[str]] = [set() for _ in outcomes]
        for attempt in range(recovery.MAX_ROUNDS):
            by_name = self.clients.by_name()
            views = self.clients.views(cfg.reward_clients)
            allowed = {v.name for v in views}
            live = {v.name for v in views if v.healthy}
            experts = [o.experts for o in outcomes]
            codes = [o.codes for o in outcomes]
            need = recovery.needs_replacement(experts, codes, live, asked_again)
            ranked = {}
            if need:
                # Everyone in the selection's order: plan_round skips current and failed experts.
                lists = self._ranked(cfg, step, [questions[q] for q in need], views, len(views), replacing=True)
                ranked = dict(zip(need, lists))
            asks, unfilled = recovery.plan_round(experts, codes, weights, live, asked_again, failed, ranked, allowed)
            for q, k in unfilled:
                if attempt == 0:
                    log.warning("run %s step %d question %s: expert %s failed; no other client to ask",
                                run_id, step, questions[q].question_id, outcomes[q].experts[k])
            if not asks:
                break
            if any(a.is_retry(experts) for a in asks):
                time.sleep(retry_backoff(attempt, base=0.2, cap=2.0))
            calls = []
            for a in asks:
                cands = self._assign(cfg, [c.text for c in groups[a.question]], outcomes[a.question].experts)[a.slot]
                calls.append((a, self.clients.pool.submit(
                    self.clients.score_one, by_name[a.target], run_id, questions[a.question], cands,
                    cfg.reward_timeout_seconds,
                )))
            for a, future in calls:
                outcome = outcomes[a.question]
                before = outcome.experts[a.slot]
                qid = questions[a.question].question_id
                if a.target == before:
                    asked_again.add((a.question, before))
                    retried += 1
                else:
                    failed[a.question].add(before)
                    log.warning("run %s step %d question %s: expert %s failed; replaced by %s",
                                run_id, step, qid, before, a.target)
                    replaced += 1
                for p in recovery.apply_answer(outcome, a.slot, a.target, *future.result()):
                    log.info("run %s step %d question %s: asked again after %s", run_id, step, qid, p)
                weights[a.question][a.slot] = a.weight
        return replaced, retried

    def _apply_quorum(self, cfg: RunConfig, outcomes: list) -> int:
        """Drop every question that fewer than ``expert_quorum`` experts answered; returns how many."""
        return recovery.apply_quorum(outcomes, cfg.expert_quorum)

    def _live_views(self, run_id: str, cfg: RunConfig) -> list[ClientView]:
        """The run's clients, after waiting (up to client_wait_seconds) for a quorum of them to be live."""
        deadline = time.monotonic() + self.client_wait_seconds
        needed = cfg.expert_quorum
        while True:
            views = self.clients.views(cfg.reward_clients)
            if sum(v.healthy for v in views) >= needed or time.monotonic() >= deadline:
                return views
            if self.store.cancel_requested(run_id):
                raise RunCancelled()
            log.info(
                "run %s: waiting for %d live reward client(s) (%d live)", run_id, needed, sum(v.healthy for v in views)
            )
            time.sleep(1.0)

    @staticmethod
    def _assign(cfg: RunConfig, texts: list[str], experts: list[str]) -> list[list[str]]:
        """The candidates each expert scores: all (consensus) or its own block (pooled)."""
        if cfg.reward_reading == "consensus":
            return [texts] * len(experts)
        g = cfg.candidates_per_question
        return [texts[j * g : (j + 1) * g] for j in range(len(experts))]

    @staticmethod
    def _rows(cfg: RunConfig, rows: list[list[float]], candidates: int) -> list[list[float]]:
        """Pooled blocks that no expert scored (fewer live experts than M) are excluded."""
        if cfg.reward_reading == "pooled" and rows:
            g = cfg.candidates_per_question
            rows = rows + [[math.nan] * g for _ in range(candidates // g - len(rows))]
        return rows

    def _export_model(self, run_id: str, version: common_pb2.PolicyVersion, source: Path | None = None) -> None:
        """Copy the final policy (at ``source``, else where the trainer published it) into the run's artifacts
        as a Hugging Face folder."""
        target = self.store.run_dir(run_id) / "model"
        tmp = target.with_name("model.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        source = source or self.policy.weights(version)
        if is_adapter(source):  # a LoRA version: the base with the adapter merged, a model users can load as is
            save_snapshot(merged(self.policy.base_dir, source), self.policy.base_dir, tmp)
        else:
            shutil.copytree(source, tmp, ignore=shutil.ignore_patterns("*.gguf", ".*"))
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
        log.info("run %s: final policy v%d exported to %s", run_id, version.version, target)
