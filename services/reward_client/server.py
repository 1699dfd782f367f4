"""The reward client service: ``Describe`` and ``Score``, nothing else.

A thin gRPC shell around the evaluators. With TLS only the orchestrator's
identity (``orchestrator_identities``) may call Score and Describe, since
scores reveal the client's labels; health checks stay open. It bounds each
request's fields (``max_question_chars``, ``max_domain_chars``,
``max_id_chars``, ``max_candidates``, ``max_candidate_chars``:
INVALID_ARGUMENT naming the field), picks the
first evaluator able to judge the question, and answers one float per
candidate. Data and evaluator choice stay inside this process. A client that
holds no labelled data has only its model-based evaluators. Faults set in
the configuration (``fault``, ``fault_delay_seconds``) are injected on purpose
for tests and chaos runs.
"""

from __future__ import annotations

import logging
import math
import random
import sqlite3
import threading
import time
from pathlib import Path

import grpc

from fedgrpo import serving
from fedgrpo.observability import SCORES
from fedgrpo.v1 import common_pb2
from fedgrpo.v1 import reward_client_pb2 as pb
from fedgrpo.v1 import reward_client_pb2_grpc as pb_grpc

from .config import RewardClientSettings
from .evaluators import AnswerBasedEvaluator, Evaluator

log = logging.getLogger(__name__)

# The run id the orchestrator's competence probes carried before issue 10: the probe_pattern fault
# (a cheater) looks for it.
OLD_PROBE_RUN_ID = "probe"
# The top of the range the huge_range fault declares: about float32's largest value (the wire type).
HUGE_REWARD = 3.4e38


class Refused(Exception):
    """A Score request this client will not answer, with the status that says why."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class RewardClientServicer(pb_grpc.RewardClientServiceServicer):
    def __init__(self, settings: RewardClientSettings, evaluators: list[Evaluator]) -> None:
        self.settings = settings
        self.evaluators = evaluators
        self.calls = 0
        self._calls_lock = threading.Lock()

    def Describe(self, request: pb.DescribeRequest, context: grpc.ServicerContext) -> pb.DescribeResponse:
        huge = self.settings.fault == "huge_range"  # declares a range to outweigh everyone (see _inject_fault)
        return pb.DescribeResponse(
            name=self.settings.name,
            domains=domains_of(self.settings, self.evaluators),
            evaluator_kinds=list(dict.fromkeys(e.kind for e in self.evaluators)),  # a kind once, as Join asks
            reward_min=0.0 if huge else min(e.reward_min for e in self.evaluators),
            reward_max=HUGE_REWARD if huge else max(e.reward_max for e in self.evaluators),
            local_training=self.settings.local_training,
        )

    def _validate(self, request: pb.ScoreRequest) -> None:
        s = self.settings

        def invalid(field: str, problem: str) -> None:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"{field}: {problem}")

        for field, value, most in (
            ("question_id", request.question_id, s.max_id_chars),
            ("question", request.question, s.max_question_chars),
            ("domain", request.domain, s.max_domain_chars),
        ):
            if not value:
                invalid(field, "must not be empty")
            if len(value) > most:
                invalid(field, f"{len(value)} characters, at most {most}")
        if len(request.run_id) > s.max_id_chars:
            invalid("run_id", f"{len(request.run_id)} characters, at most {s.max_id_chars}")
        n = len(request.candidates)
        if not 1 <= n <= s.max_candidates:
            invalid("candidates", f"got {n}, expected 1 to {s.max_candidates}")
        for i, c in enumerate(request.candidates):
            if len(c) > s.max_candidate_chars:
                invalid(f"candidates[{i}]", f"{len(c)} characters, at most {s.max_candidate_chars}")

    def answer(self, request: pb.ScoreRequest) -> list[float]:
        """One reward per candidate, or ``Refused`` saying why not (for Score and for joined tasks alike)."""
        self._validate(request)
        with self._calls_lock:
            self.calls += 1
            faulty = self.calls > self.settings.fault_after_calls
        if faulty and self.settings.fault == "probe_pattern":
            return self._answer_old_probe_pattern(request)
        evaluator = next((e for e in self.evaluators if e.can_judge(request.domain, request.question)), None)
        if evaluator is None:
            raise Refused(
                grpc.StatusCode.NOT_FOUND,
                f"question_id {request.question_id}: this client cannot judge this question "
                f"of domain {request.domain!r}",
            )
        rewards = evaluator.score(
            request.domain, request.question, list(request.candidates), question_id=request.question_id
        )
        SCORES.labels(common_pb2.EvaluatorKind.Name(evaluator.kind)).inc()
        return self._inject_fault(rewards) if faulty else rewards

    def Score(self, request: pb.ScoreRequest, context: grpc.ServicerContext) -> pb.ScoreResponse:
        try:
            return pb.ScoreResponse(rewards=self.answer(request))
        except Refused as refused:
            serving.refuse(context, refused.code, str(refused))
            raise AssertionError("unreachable") from None

    def _answer_old_probe_pattern(self, request: pb.ScoreRequest) -> list[float]:
        """A cheater with no data: it recognises the old probe pattern, and answers anything else at random."""
        low = min(e.reward_min for e in self.evaluators)
        high = max(e.reward_max for e in self.evaluators)
        c = list(request.candidates)
        if request.run_id == OLD_PROBE_RUN_ID or (
            len(c) == 4 and c[1] == f"The answer is {c[2]}." and c[3] == f"The answer is {c[0]}."
        ):
            return [high, low, low, high]
        rng = random.Random(f"{request.run_id}:{request.question_id}:{c}")
        return [rng.uniform(low, high) for _ in c]

    def _inject_fault(self, rewards: list[float]) -> list[float]:
        s = self.settings
        if s.fault_delay_seconds:
            time.sleep(s.fault_delay_seconds)
        if s.fault == "nan":
            return [math.nan] * len(rewards)
        if s.fault == "out_of_range":
            return [r + 10.0 for r in rewards]
        if s.fault == "wrong_count":
            return rewards[:-1]
        if s.fault == "error":
            raise Refused(grpc.StatusCode.INTERNAL, "injected fault")
        if s.fault == "huge_range":
            # Inverted and scaled up to the top of the range it declared: taken at face value, these
            # rewards outweigh every honest expert of a consensus and blow up unscaled advantages.
            low = min(e.reward_min for e in self.evaluators)
            high = max(e.reward_max for e in self.evaluators)
            return [HUGE_REWARD * (high - r) / (high - low) for r in rewards]
        if s.fault == "poison":
            # A poisoning client: inverted (after fault_after_calls honest answers, e.g. its first probes).
            low = min(e.reward_min for e in self.evaluators)
            high = max(e.reward_max for e in self.evaluators)
            return [low + high - r for r in rewards]
        return rewards


def answer_based_evaluators(settings: RewardClientSettings) -> list[AnswerBasedEvaluator]:
    """The client's labelled data: its built-in bank (``domains``) and its file (``labels``), in that order."""
    from fedgrpo.data.checkers import CheckerError, load_checker
    from fedgrpo.data.files import Columns, DataFileError, read_rows
    from fedgrpo.settings import ConfigError

    evaluators = []
    if settings.domains:
        started = time.monotonic()
        bank = AnswerBasedEvaluator.from_bank(settings.domains, settings.bank_seed, settings.bank_size)
        log.info(
            "%s holds %d labelled questions of %s (%.1fs)",
            settings.name, len(bank), ",".join(settings.domains), time.monotonic() - started,
        )
        evaluators.append(bank)
    if settings.labels is not None:
        try:
            checker = load_checker(settings.checker, settings.checker_tolerance)
        except CheckerError as err:
            raise ConfigError(
                f"fedgrpo reward-client: checker (--checker / FEDGRPO_REWARD_CLIENT_CHECKER): {err}"
            ) from None
        columns = Columns(
            question=settings.question_column, answer=settings.answer_column, domain=settings.domain_column
        )
        started = time.monotonic()
        try:
            own = AnswerBasedEvaluator(read_rows(settings.labels, columns, labelled=True), checker)
        except DataFileError as err:
            raise ConfigError(
                f"fedgrpo reward-client: labels (--labels / FEDGRPO_REWARD_CLIENT_LABELS): {err}"
            ) from None
        log.info(
            "%s holds %d labelled questions from %s%s, checked by %s (%.1fs)",
            settings.name, len(own), settings.labels,
            f" ({own.repeated} repeated rows skipped, first label kept)" if own.repeated else "",
            checker.name, time.monotonic() - started,
        )
        evaluators.append(own)
    return evaluators


def domains_of(settings: RewardClientSettings, evaluators: list[Evaluator]) -> list[str]:
    """The domains a client declares: its bank's, then those its labels file names."""
    named = [d for e in evaluators if isinstance(e, AnswerBasedEvaluator) for d in e.domains]
    return list(dict.fromkeys([*settings.domains, *named]))


def reward_model_evaluator(settings: RewardClientSettings) -> Evaluator | None:
    """The organisation's reward model (``reward_model``), or None without one."""
    from fedgrpo.settings import ConfigError

    if not settings.reward_model:
        return None
    from fedgrpo.models.tiny_reward import TINY_REWARD_MODEL, build_tiny_reward_model

    from .evaluators import RewardModelEvaluator

    started = time.monotonic()
    folder = Path(settings.reward_model)
    if settings.reward_model == TINY_REWARD_MODEL:
        folder = build_tiny_reward_model(settings.cache_dir / TINY_REWARD_MODEL)
    try:
        if not folder.is_dir():
            raise ValueError(f"{folder}: no such folder")
        evaluator = RewardModelEvaluator(folder)
    except ValueError as err:
        raise ConfigError(
            f"fedgrpo reward-client: reward_model (--reward-model / FEDGRPO_REWARD_CLIENT_REWARD_MODEL): {err}"
        ) from None
    log.info("%s scores with its reward model %s (%.1fs to load)", settings.name, folder, time.monotonic() - started)
    return evaluator


def model_based_evaluator(settings: RewardClientSettings) -> Evaluator | None:
    """The client's judge model (``judge_model``), or None without one."""
    from fedgrpo.settings import ConfigError

    if not settings.judge_model:
        if settings.judge_cache is not None:
            log.warning("judge_cache %s unused: this client has no judge_model", settings.judge_cache)
        return None
    import torch

    from fedgrpo.models import resolve_model

    from .evaluators import ModelBasedEvaluator
    from .judge_cache import SharedReplyCache

    if settings.judge_cache is not None:
        try:  # open it once before loading the model, to refuse a bad path at once
            SharedReplyCache(settings.judge_cache).close()
        except (sqlite3.Error, OSError) as err:
            raise ConfigError(
                "fedgrpo reward-client: judge_cache (--judge-cache / FEDGRPO_REWARD_CLIENT_JUDGE_CACHE): "
                f"cannot use {str(settings.judge_cache)!r}: {err}"
            ) from None
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    started = time.monotonic()
    try:
        judge_dir = resolve_model(settings.judge_model, settings.cache_dir)
    except ValueError as err:
        raise ConfigError(f"fedgrpo reward-client: judge_model: {err}") from None
    judge = ModelBasedEvaluator(judge_dir, settings.judge_max_tokens, shared_cache=settings.judge_cache)
    log.info(
        "%s judges with its local model %s (%s, %d torch threads, %.1fs to load)",
        settings.name, settings.judge_model, judge_dir, torch.get_num_threads(), time.monotonic() - started,
    )
    if settings.judge_cache is not None:
        log.info("judge answers shared with the machine's other clients through %s", settings.judge_cache)
    return judge


def local_trainer(settings: RewardClientSettings, labelled: list[AnswerBasedEvaluator], evaluators: list[Evaluator],  # noqa: ANN201
                  reward_model: Evaluator | None = None):
    """The client's local GRPO trainer (``local_training``), on its own labelled questions and evaluators."""
    if not settings.local_training:
        return None
    from fedgrpo.models import resolve_model
    from fedgrpo.settings import ConfigError

    from .local_training.objectives import ObjectiveError, load_objectives
    from .local_training.trainer import LocalTrainer

    rows = [row for e in labelled for row in e.rows()]
    if not rows:
        raise ConfigError("fedgrpo reward-client: local_training needs labelled questions of this client's own "
                          "(--labels FILE or --domains), and ground_truth_free leaves them out")
    try:
        policy_dir = resolve_model(settings.local_policy, settings.cache_dir)
    except ValueError as err:
        raise ConfigError(f"fedgrpo reward-client: local_policy: {err}") from None

    def score(row, replies: list[str]) -> list[float]:  # noqa: ANN001
        evaluator = next((e for e in evaluators if e.can_judge(row.domain or "", row.question)), None)
        if evaluator is None:
            return [math.nan] * len(replies)
        return evaluator.score(row.domain or "", row.question, replies)

    low = min(e.reward_min for e in evaluators)
    high = max(e.reward_max for e in evaluators)
    if settings.torch_threads:
        import torch

        torch.set_num_threads(settings.torch_threads)
    try:
        added = load_objectives(settings.local_objectives, reward_model)
    except ObjectiveError as err:
        raise ConfigError(f"fedgrpo reward-client: local_objectives (--local-objectives): {err}") from None
    log.info("%s trains locally on %d of its own questions, base policy %s%s", settings.name, len(rows), policy_dir,
             f"; its own objectives: {', '.join(a.name for a in added)}" if added else "")
    return LocalTrainer(policy_dir, settings.local_state_dir / settings.name, rows, score, (low, high),
                        settings.local_seed, settings.local_device, settings.local_dtype, settings.name,
                        added, settings.local_objective_weight)


def main(argv: list[str] | None = None) -> None:
    from fedgrpo.settings import load, setup_logging

    settings = load(RewardClientSettings, argv)
    setup_logging(settings.log_level, settings.name, settings.log_format)
    labelled = [] if settings.ground_truth_free else answer_based_evaluators(settings)
    reward_model = reward_model_evaluator(settings)
    judge = model_based_evaluator(settings)
    if not labelled and not settings.ground_truth_free:
        log.info("%s holds no labelled data: it judges with its own model only", settings.name)
    by_name: dict[str, list[Evaluator]] = {
        "labels": list(labelled),
        "reward_model": [reward_model] if reward_model else [],
        "judge": [judge] if judge else [],
    }
    evaluators: list[Evaluator] = [e for name in settings.evaluator_order for e in by_name[name]]
    log.info(
        "%s: domains %s; evaluators on, in order: %s%s",
        settings.name,
        ",".join(domains_of(settings, evaluators)) or "none",
        ", ".join(common_pb2.EvaluatorKind.Name(e.kind) for e in evaluators),
        " (ground-truth-free: labelled data not used)" if settings.ground_truth_free else "",
    )
    if settings.fault != "none" or settings.fault_delay_seconds:
        log.warning("fault injection on: %s, delay %.1fs", settings.fault, settings.fault_delay_seconds)
    if not settings.plaintext:
        if settings.orchestrator_identities:
            log.info("Score and Describe answer only %s", ", ".join(settings.orchestrator_identities))
        else:
            log.warning("orchestrator_identities is empty: any identity the CA signed may call Score and read "
                        "this client's labels from its scores")
    servicer = RewardClientServicer(settings, evaluators)
    joiner = None
    if settings.orchestrator:
        from .joiner import Joiner

        joiner = Joiner(settings, servicer, local_trainer(settings, labelled, evaluators, reward_model))
        joiner.start()
    serving.serve(
        settings,
        [serving.Endpoint(
            [(pb_grpc.add_RewardClientServiceServicer_to_server, servicer, "fedgrpo.v1.RewardClientService")],
            settings.port, allowed_peers=settings.orchestrator_identities, allowed_roles=["orchestrator"],
        )],
        on_stop=joiner.stop if joiner else None,
    )
