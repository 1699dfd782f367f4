"""The policy trainer service: a thin gRPC shell around ``PolicyTrainer``.

Validates every request (naming the field on INVALID_ARGUMENT; a non-finite
advantage is refused, one beyond ``max_advantage`` clamped and counted in
``TrainMetrics.advantages_clamped``), serialises access to the single active
policy, and maps a batch that does not follow the current step or version, or
a checkpoint that cannot be resumed, to FAILED_PRECONDITION. DownloadPolicyWeights
streams a kept snapshot without taking that lock (``weights_download``), so an
orchestrator on another machine fetches a version while the next step trains.

Under torchrun (``WORLD_SIZE`` > 1) rank 0 serves and the other ranks follow
it (``distributed.py``): the same service, its policy sharded across them.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
import threading
from collections.abc import Iterator

import grpc
import torch

from fedgrpo import serving, spec_enums
from fedgrpo.advantage_bound import DEFAULT_MAX_ADVANTAGE, clamped
from fedgrpo.models.adapters import LoraSettings
from fedgrpo.observability import POLICY_VERSION, TRAIN_SECONDS
from fedgrpo.services.orchestrator.artifacts import chunk_size
from fedgrpo.v1 import common_pb2
from fedgrpo.v1 import orchestrator_pb2 as opb
from fedgrpo.v1 import policy_trainer_pb2 as pb
from fedgrpo.v1 import policy_trainer_pb2_grpc as pb_grpc

from . import distributed
from .batching import Sample
from .config import TrainerSettings
from .loss import LossSettings
from .trainer import CheckpointError, OptimizerConfig, PolicyTrainer, SamplerLogprobsNeeded, StaleBatch, Version
from .weights_download import WeightsServer

log = logging.getLogger(__name__)

RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # fullmatch: "$" would allow a trailing newline
MAX_BATCH_SEQUENCES = 4096
MAX_SEQUENCE_TOKENS = 32_768
MAX_POLICY_LAG = 16


def version_message(v: Version) -> common_pb2.PolicyVersion:
    return common_pb2.PolicyVersion(
        run_id=v.run_id, version=v.version, weights_path=str(v.weights_path), last_step=v.last_step
    )


def check_run_id(run_id: str, context: grpc.ServicerContext) -> None:
    """INVALID_ARGUMENT naming ``run_id`` unless it is one the trainer accepts."""
    if not RUN_ID.fullmatch(run_id):
        serving.invalid(context, "run_id", f"got {run_id!r}, expected 1-64 letters, digits, '_', '-', '.'")


def optimizer_config(msg: pb.OptimizerSettings, context: grpc.ServicerContext) -> OptimizerConfig:
    def check(name: str, ok: bool, expected: str) -> None:
        if not ok:
            serving.invalid(context, f"optimizer.{name}", f"got {getattr(msg, name)!r}, expected {expected}")

    check("learning_rate", math.isfinite(msg.learning_rate) and msg.learning_rate > 0, "> 0")
    try:  # UNSPECIFIED: LossSettings' default
        loss_type = spec_enums.readable(common_pb2.LossType.DESCRIPTOR, msg.loss_type, "optimizer.loss_type")
    except spec_enums.UnknownChoice as err:
        serving.invalid(context, err.field, err.problem)
    loss_type = loss_type or LossSettings.loss_type  # the enum's names are LOSS_TYPES (tests/test_spec_enums.py)
    check("beta", math.isfinite(msg.beta) and msg.beta >= 0, ">= 0")
    check("epsilon_low", 0 <= msg.epsilon_low < 1, "in [0, 1)")
    check("epsilon_high", 0 <= msg.epsilon_high <= 10, "in [0, 10]")
    check("updates_per_batch", 1 <= msg.updates_per_batch <= 64, "in [1, 64]")
    check("max_grad_norm", math.isfinite(msg.max_grad_norm) and msg.max_grad_norm >= 0, ">= 0 (0 disables)")
    check("weight_decay", math.isfinite(msg.weight_decay) and msg.weight_decay >= 0, ">= 0")
    # Unset (older callers) is 1.0; an explicit 0 (greedy) has no log-probabilities to train on.
    temperature = msg.temperature if msg.HasField("temperature") else 1.0
    check("temperature", math.isfinite(temperature) and temperature > 0, "a finite number > 0 (unset: 1.0)")
    check("max_policy_lag", 0 <= msg.max_policy_lag <= MAX_POLICY_LAG, f"in [0, {MAX_POLICY_LAG}]")
    return OptimizerConfig(
        learning_rate=msg.learning_rate,
        loss=LossSettings(loss_type, msg.beta, msg.epsilon_low, msg.epsilon_high),
        updates_per_batch=msg.updates_per_batch,
        max_grad_norm=msg.max_grad_norm,
        weight_decay=msg.weight_decay,
        temperature=temperature,
        max_policy_lag=msg.max_policy_lag,
    )


class PolicyTrainerServicer(pb_grpc.PolicyTrainerServiceServicer):
    def __init__(
        self, trainer: PolicyTrainer, vocab_size: int, max_advantage: float = DEFAULT_MAX_ADVANTAGE,
        max_message_bytes: int = serving.MAX_MESSAGE_BYTES,
    ) -> None:
        self.trainer = trainer
        self.vocab_size = vocab_size
        self.max_advantage = max_advantage
        self.lock = threading.Lock()
        self.weights = WeightsServer(trainer, chunk_bytes=chunk_size(max_message_bytes))

    def _check_run(self, run_id: str, context: grpc.ServicerContext) -> None:
        check_run_id(run_id, context)
        if run_id != self.trainer.run_id:
            serving.failed_precondition(context, f"run_id {run_id}: no policy started; call StartPolicy first")

    def StartPolicy(self, request: pb.StartPolicyRequest, context: grpc.ServicerContext) -> common_pb2.PolicyVersion:
        check_run_id(request.run_id, context)
        config = optimizer_config(request.optimizer, context)
        if config.max_policy_lag >= self.trainer.keep_snapshots:
            # The engine may still be loading a snapshot that many versions old when a newer one is written.
            serving.failed_precondition(
                context, f"optimizer.max_policy_lag: {config.max_policy_lag} needs a trainer keeping at least "
                f"{config.max_policy_lag + 1} policy snapshots; this one keeps {self.trainer.keep_snapshots} "
                "(--keep-snapshots, FEDGRPO_TRAINER_KEEP_SNAPSHOTS)", reason="TOO_FEW_SNAPSHOTS",
            )
        with self.lock:
            try:
                return version_message(self.trainer.start(request.run_id, config, request.restart))
            except CheckpointError as err:
                serving.failed_precondition(context, f"run_id {request.run_id}: {err}")

    def GetPolicyVersion(
        self, request: pb.GetPolicyVersionRequest, context: grpc.ServicerContext
    ) -> common_pb2.PolicyVersion:
        with self.lock:
            self._check_run(request.run_id, context)
            return version_message(self.trainer.current())

    def GetLineage(self, request: pb.GetPolicyVersionRequest, context: grpc.ServicerContext) -> pb.PolicyLineage:
        with self.lock:
            self._check_run(request.run_id, context)
            lineage = self.trainer.lineage()
        return pb.PolicyLineage(
            run_id=lineage.run_id, applied_steps=lineage.applied_steps, checkpoint_step=lineage.checkpoint_step
        )

    def DownloadPolicyWeights(
        self, request: pb.DownloadPolicyWeightsRequest, context: grpc.ServicerContext
    ) -> Iterator[opb.ArtifactChunk]:
        check_run_id(request.run_id, context)
        yield from self.weights.download(request, context)

    def _samples(self, request: pb.TrainBatch, context: grpc.ServicerContext) -> tuple[list[Sample], int]:
        """The batch's samples, advantages clamped to ``max_advantage``, and how many were clamped."""
        if not request.sequences:
            serving.invalid(context, "sequences", "at least one sequence is needed")
        if len(request.sequences) > MAX_BATCH_SEQUENCES:
            serving.invalid(context, "sequences", f"{len(request.sequences)} sequences, at most {MAX_BATCH_SEQUENCES}")
        if request.max_completion_tokens < 0:
            serving.invalid(context, "max_completion_tokens", "must be >= 0")
        samples = []
        for i, s in enumerate(request.sequences):
            where = f"sequences[{i}]"
            if not s.prompt_token_ids:
                serving.invalid(context, f"{where}.prompt_token_ids", "must not be empty")
            if not s.completion_token_ids:
                serving.invalid(context, f"{where}.completion_token_ids", "must not be empty")
            if len(s.prompt_token_ids) + len(s.completion_token_ids) > MAX_SEQUENCE_TOKENS:
                serving.invalid(context, where, f"longer than {MAX_SEQUENCE_TOKENS} tokens")
            token_lists = (("prompt_token_ids", s.prompt_token_ids), ("completion_token_ids", s.completion_token_ids))
            for name, ids in token_lists:
                bad = next((t for t in ids if not 0 <= t < self.vocab_size), None)
                if bad is not None:
                    serving.invalid(
                        context, f"{where}.{name}", f"token {bad} outside the vocabulary [0, {self.vocab_size})"
                    )
            if s.completion_logprobs:
                if len(s.completion_logprobs) != len(s.completion_token_ids):
                    serving.invalid(
                        context, f"{where}.completion_logprobs",
                        f"{len(s.completion_logprobs)} values for {len(s.completion_token_ids)} completion tokens",
                    )
                if not all(math.isfinite(x) and x <= 1e-3 for x in s.completion_logprobs):
                    serving.invalid(
                        context, f"{where}.completion_logprobs", "log-probabilities must be finite and <= 0"
                    )
            if not math.isfinite(s.advantage):
                serving.invalid(context, f"{where}.advantage", f"got {s.advantage}, expected a finite number")
            samples.append(
                Sample(
                    list(s.prompt_token_ids), list(s.completion_token_ids),
                    list(s.completion_logprobs) if s.completion_logprobs else None, s.advantage,
                )
            )
        # The orchestrator clamps too; this bound holds whatever a caller sends (one huge advantage
        # would own the batch's gradient).
        advantages, count = clamped([x.advantage for x in samples], self.max_advantage)
        if count:
            samples = [dataclasses.replace(x, advantage=a) for x, a in zip(samples, advantages)]
        return samples, count

    def Train(self, request: pb.TrainBatch, context: grpc.ServicerContext) -> pb.TrainResponse:
        samples, clamped_count = self._samples(request, context)
        if clamped_count:
            log.warning("run %s step %d: %d advantage(s) clamped to +-%g", request.run_id, request.step,
                        clamped_count, self.max_advantage)
        with self.lock:
            self._check_run(request.run_id, context)
            try:
                r = self.trainer.train(request.step, request.policy_version, samples, request.max_completion_tokens)
            except StaleBatch as err:
                serving.failed_precondition(context, str(err))
            except SamplerLogprobsNeeded as err:
                serving.invalid(context, f"sequences[{err.index}].completion_logprobs", str(err))
        TRAIN_SECONDS.observe(r.train_seconds)
        POLICY_VERSION.set(r.version.version)
        log.info(
            "run %s step %d -> version %d: loss %.4f kl %.4f clip %.3f |g| %.3f (%d seqs, %.2fs + %.2fs snapshot)",
            request.run_id, r.step, r.version.version, r.loss, r.kl, r.clip_ratio, r.grad_norm,
            r.sequences, r.train_seconds, r.snapshot_seconds,
        )
        return pb.TrainResponse(
            metrics=pb.TrainMetrics(
                loss=r.loss, kl=r.kl, clip_ratio=r.clip_ratio, grad_norm=r.grad_norm, sequences=r.sequences,
                tokens=r.tokens, train_seconds=r.train_seconds, snapshot_seconds=r.snapshot_seconds,
                advantages_clamped=clamped_count,
            ),
            policy=version_message(r.version),
        )


def lora_settings(base_dir, settings: TrainerSettings) -> LoraSettings | None:  # noqa: ANN001
    """The adapter ``--lora-rank`` asks for (None: full fine-tuning), refused at start if the model cannot take it
    (tried on an empty model on the meta device: no weights read)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from fedgrpo.models.adapters import lora_model
    from fedgrpo.settings import ConfigError

    if not settings.lora_rank:
        return None
    if not settings.lora_target_modules:
        raise ConfigError("fedgrpo trainer: lora_target_modules is empty; name the modules (q_proj,v_proj) or "
                          "all-linear")
    lora = LoraSettings(settings.lora_rank, settings.lora_alpha or 2.0 * settings.lora_rank,
                        tuple(settings.lora_target_modules))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(base_dir))
    try:
        lora_model(model, lora)
    except ValueError as err:
        raise ConfigError(f"fedgrpo trainer: lora_target_modules: {' '.join(str(err).split())[:300]}") from None
    return lora


def main(argv: list[str] | None = None) -> None:
    from transformers import AutoConfig

    from fedgrpo.models import resolve_model
    from fedgrpo.settings import ConfigError, load, setup_logging

    settings = load(TrainerSettings, argv)
    setup_logging(settings.log_level, "trainer", settings.log_format)
    if settings.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("fedgrpo trainer: device is cuda but no GPU is visible; set --device cpu")
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    try:
        base_dir = resolve_model(settings.model, settings.cache_dir)
    except ValueError as err:
        raise ConfigError(f"fedgrpo trainer: model: {err}") from None
    vocab_size = AutoConfig.from_pretrained(base_dir).vocab_size
    if distributed.world_size() > 1 and settings.dtype == "float16":
        raise ConfigError("fedgrpo trainer: dtype float16 across several ranks (torchrun) is not supported; "
                          "set --dtype bfloat16")
    if distributed.world_size() > 1 and settings.lora_rank:
        raise ConfigError("fedgrpo trainer: --lora-rank across several ranks (torchrun) is not supported; "
                          "train the adapter in one process (--lora-rank 0 for a sharded full model)")
    lora = lora_settings(base_dir, settings)
    ranks = distributed.join(settings.device)  # None unless started by torchrun with several processes
    trainer = PolicyTrainer(
        base_dir, settings.state_dir, ranks.device(settings.device) if ranks else settings.device, settings.dtype,
        settings.keep_snapshots, settings.checkpoint_every, settings.gradient_checkpointing, settings.share_prompts,
        settings.micro_batch_sequences, ranks, lora,
    )
    if ranks is not None and not ranks.leader:
        log.info("rank %d of %d: following rank 0 (which serves port %d)", ranks.rank, ranks.world, settings.port)
        distributed.follow(trainer)
        distributed.leave()
        return
    policy = distributed.Lockstep(trainer) if ranks is not None else trainer
    serving.serve(
        settings,
        [serving.Endpoint(
            [(pb_grpc.add_PolicyTrainerServiceServicer_to_server,
              PolicyTrainerServicer(policy, vocab_size, settings.max_advantage, settings.max_message_bytes),
              "fedgrpo.v1.PolicyTrainerService")],
            settings.port, allowed_peers=settings.allowed_callers, allowed_roles=["orchestrator"],
        )],
        max_workers=4,
        on_stop=policy.close if ranks is not None else None,
    )
    if ranks is not None:
        distributed.leave()
