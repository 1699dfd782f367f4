"""The policy of one run: load, update with the group-relative loss, publish.

``PolicyTrainer.start(run_id, optimizer)`` loads the base policy (or resumes
the run's last checkpoint) and returns the current ``Version``;
``train(batch)`` applies ``updates_per_batch`` AdamW steps on one batch and
publishes the new weights as a Hugging Face snapshot ``v<N>`` that vLLM can
reload in place. Steps are idempotent: a batch whose step was already applied
returns the recorded result instead of training twice. One run at a time.

Precision (``precision.py``): the policy's weights and AdamW state are float32
whatever ``dtype`` says; ``dtype`` is the compute dtype under autocast and
the dtype of the published snapshots. Checkpoints hold the float32 master
weights, the optimizer state and the float16 loss scaler. The frozen
reference (beta > 0) is kept in ``dtype``: it is never updated.

Log-probabilities (policy, recomputed old, reference) are those of
``softmax(logits / temperature)``, the run's sampling temperature. With
``share_prompts`` (the default) and attention that takes a custom mask, each
group is one unpadded row with its prompt computed once (``shared_prompt.py``);
otherwise every sequence is computed in full over the padded batch
(``batching.py``). The numbers are the same either way.

``applied_steps`` is the lineage of the weights: the steps whose updates they
contain, in order. It is checkpointed with them, so after a crash it says
exactly which steps the caller must replay (those after ``checkpoint_step``).

With ``ranks`` (torchrun; ``distributed.py``) the policy is sharded with FSDP2
and every rank runs ``start`` and ``train`` in lockstep, each on its share of
the batch; rank 0 alone writes snapshots and checkpoints, gathered whole. A
checkpoint resumes under the kind of launch that wrote it: one process, or
torchrun with any number of ranks (their optimizer states are keyed apart).

With ``lora`` (``fedgrpo.models.adapters``) the base weights stay frozen and
a LoRA adapter is trained instead: AdamW holds the adapter alone, snapshots
and checkpoints are the adapter alone, and the frozen reference (beta > 0)
is the same model with its adapter switched off, not a copy.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel

from fedgrpo.models import prune_snapshots, save_snapshot
from fedgrpo.models.adapters import LoraSettings, adapter_state, load_adapter_state, lora_model, save_adapter

from . import distributed
from .batching import PackedBatch, Sample, pack
from .loss import BatchTotals, LossSettings, policy_loss, token_logprobs
from .precision import Precision, apply_gradients
from .shared_prompt import attention_of, prompt_groups, shared_prompt_logprobs, supports_tree_mask

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OptimizerConfig:
    learning_rate: float = 1e-5
    loss: LossSettings = field(default_factory=LossSettings)
    updates_per_batch: int = 2
    max_grad_norm: float = 1.0
    weight_decay: float = 0.0
    # The rollouts' sampling temperature: log-probabilities are of logits / temperature.
    temperature: float = 1.0
    # Versions a batch's sampling policy may be behind the current one (an asynchronous run).
    max_policy_lag: int = 0


@dataclass(frozen=True)
class Version:
    run_id: str
    version: int
    weights_path: Path
    last_step: int


@dataclass(frozen=True)
class Lineage:
    run_id: str
    applied_steps: tuple[int, ...]
    checkpoint_step: int


@dataclass(frozen=True)
class StepResult:
    step: int
    version: Version
    loss: float
    kl: float
    clip_ratio: float
    grad_norm: float
    sequences: int
    tokens: int
    train_seconds: float
    snapshot_seconds: float


class SamplerLogprobsNeeded(ValueError):
    """A batch sampled behind the current policy lacks the sampler's log-probabilities (sample ``index``)."""

    def __init__(self, index: int, sampled_by: int, current: int) -> None:
        super().__init__(
            f"required: the batch was sampled by version {sampled_by}, behind the current version {current}, "
            "so only the sampler's log-probabilities give the importance ratio"
        )
        self.index = index


class StaleBatch(Exception):
    """The batch does not follow the policy's current step or version."""


class CheckpointError(Exception):
    """A run's checkpoint cannot be resumed."""


class PolicyTrainer:
    def __init__(
        self,
        base_dir: Path,
        state_dir: Path,
        device: str = "cpu",
        dtype: str = "float32",
        keep_snapshots: int = 2,
        checkpoint_every: int = 5,
        gradient_checkpointing: bool = False,
        share_prompts: bool = True,
        micro_batch_sequences: int = 0,
        ranks: distributed.Ranks | None = None,
        lora: LoraSettings | None = None,
    ) -> None:
        self.base_dir = Path(base_dir)
        self.state_dir = Path(state_dir)
        self.precision = Precision.of(device, dtype)
        self.device = self.precision.device
        self.keep_snapshots = keep_snapshots
        self.checkpoint_every = checkpoint_every
        self.gradient_checkpointing = gradient_checkpointing
        self.share_prompts = share_prompts
        self.micro_batch_sequences = micro_batch_sequences
        self.ranks = ranks
        self.lora = lora
        if ranks is not None and lora is not None:
            raise ValueError("LoRA across several ranks is not supported: train the adapter in one process")
        if ranks is not None and self.precision.dtype == torch.float16:
            raise ValueError("dtype float16 with several ranks needs a sharded loss scaler; use bfloat16")
        self.run_id: str | None = None
        self.config = OptimizerConfig()
        self.model: PreTrainedModel | None = None
        self.reference: PreTrainedModel | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.scaler = self.precision.grad_scaler()
        self.version = 0
        self.applied_steps: list[int] = []
        self.checkpoint_step = 0
        self.results: dict[int, StepResult] = {}

    @property
    def last_step(self) -> int:
        return self.applied_steps[-1] if self.applied_steps else 0

    # ---- paths -------------------------------------------------------------
    def run_dir(self, run_id: str) -> Path:
        return self.state_dir / "runs" / run_id

    def snapshot_path(self, run_id: str, version: int) -> Path:
        # Version 0 is the untouched base model: no copy needed.
        return self.base_dir if version == 0 else self.run_dir(run_id) / "policy" / f"v{version}"

    def current(self) -> Version:
        assert self.run_id is not None
        return Version(self.run_id, self.version, self.snapshot_path(self.run_id, self.version), self.last_step)

    def lineage(self) -> Lineage:
        assert self.run_id is not None
        return Lineage(self.run_id, tuple(self.applied_steps), self.checkpoint_step)

    # ---- lifecycle ---------------------------------------------------------
    @property
    def writes(self) -> bool:
        """Whether this process writes snapshots and checkpoints (one process, or rank 0)."""
        return self.ranks is None or self.ranks.leader

    def _load_base(self) -> PreTrainedModel:
        # float32 master weights whatever the compute dtype (module docstring).
        model = AutoModelForCausalLM.from_pretrained(self.base_dir, dtype=torch.float32)
        return model.to(self.device)

    def _placed(self, model: PreTrainedModel) -> PreTrainedModel:
        return distributed.shard(model) if self.ranks else model

    def start(self, run_id: str, config: OptimizerConfig, restart: bool = False) -> Version:
        """Make ``run_id`` the active run, resuming its checkpoint unless ``restart``.

        If ``run_id`` is already the active run, it keeps its live weights:
        only this trainer's own restart may fall back to the checkpoint, since
        reloading it would drop the steps applied after it.
        """
        if run_id == self.run_id and self.model is not None and not restart:
            if config != self.config:
                log.warning(
                    "run %s is already active: keeping its optimizer settings %s, not %s (restart to change them)",
                    run_id, self.config, config,
                )
            log.info("run %s is already active at version %d (step %d)", run_id, self.version, self.last_step)
            return self.current()
        started = time.monotonic()
        try:
            self._load(run_id, config, restart)
        except BaseException:
            # A half-loaded run must not pass for a live one on the next start.
            self.run_id, self.model, self.reference, self.optimizer = None, None, None, None
            raise
        log.info(
            "run %s: policy at version %d (step %d, checkpoint at step %d), reference %s, %.1fs",
            run_id, self.version, self.last_step, self.checkpoint_step,
            "loaded" if self.reference else "off (beta = 0)", time.monotonic() - started,
        )
        return self.current()

    def _load(self, run_id: str, config: OptimizerConfig, restart: bool) -> None:
        self.run_id, self.config = run_id, config
        model = self._load_base()
        if self.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        if self.lora is not None:
            model = lora_model(model, self.lora)
        self.model = self._placed(model)
        self.model.train()
        if self.share_prompts and not supports_tree_mask(self.model):
            log.warning("share_prompts: the model's %s attention takes no custom mask; batches are trained padded "
                        "with every prompt repeated", attention_of(self.model))
        self.reference = None
        if config.loss.beta > 0 and self.lora is None:
            base = self._load_base() if self.ranks else copy.deepcopy(self.model)  # a sharded model is not copied
            self.reference = self._placed(base.to(self.precision.dtype)).eval().requires_grad_(False)
        self.optimizer = torch.optim.AdamW(
            [p for p in self.model.parameters() if p.requires_grad], lr=config.learning_rate,
            weight_decay=config.weight_decay,
        )
        self.scaler = self.precision.grad_scaler()
        self.version, self.applied_steps, self.checkpoint_step = 0, [], 0
        self.results = {}
        ckpt = self.run_dir(run_id) / "checkpoint"
        if restart:
            if self.writes and self.run_dir(run_id).exists():
                shutil.rmtree(self.run_dir(run_id))
        elif self._shared((ckpt / "state.json").exists()):
            self._load_checkpoint(ckpt)

    def replace_adapter(self, state: dict) -> None:
        """Start over from another LoRA adapter's weights with a fresh optimizer (a federated round's start)."""
        if self.lora is None or self.model is None:
            raise ValueError("replace_adapter: the trainer trains no LoRA adapter (start it with lora settings)")
        load_adapter_state(self.model, state)
        self.optimizer = torch.optim.AdamW(
            [p for p in self.model.parameters() if p.requires_grad], lr=self.config.learning_rate,
            weight_decay=self.config.weight_decay,
        )

    def _shared(self, value: object) -> object:
        """``value`` as rank 0 sees it (its files), on every rank; itself in one process."""
        return distributed.broadcast(value) if self.ranks else value

    # ---- one step ----------------------------------------------------------
    def completion_logprobs(self, model: PreTrainedModel, batch: PackedBatch) -> torch.Tensor:
        """[B, C] float32 log-probabilities of the completion tokens at the run's temperature."""
        with self.precision.autocast():
            out = model(
                input_ids=batch.input_ids,
                attention_mask=batch.attention_mask,
                position_ids=batch.position_ids,
                logits_to_keep=batch.completion_width + 1,
                use_cache=False,
            )
        # Logits at column t predict token t + 1: drop the last one. token_logprobs
        # upcasts one row at a time to float32.
        return token_logprobs(out.logits[:, :-1, :], batch.completion_ids, self.config.temperature)

    @property
    def pad_id(self) -> int:
        assert self.model is not None
        pad_id = self.model.config.pad_token_id
        if pad_id is None:
            pad_id = self.model.config.eos_token_id if isinstance(self.model.config.eos_token_id, int) else 0
        return pad_id

    def sequence_logprobs(self, model: PreTrainedModel, batch: PackedBatch, samples: list[Sample]) -> torch.Tensor:
        """[B, C] completion log-probabilities, each group one unpadded row with its prompt once when
        ``share_prompts`` and the model's attention takes the mask (``shared_prompt.py``; the same numbers,
        fewer tokens), else over the packed batch."""
        if self.share_prompts and supports_tree_mask(model):
            return shared_prompt_logprobs(
                model, samples, self.pad_id, self.config.temperature, self.device, self.precision.autocast
            )
        return self.completion_logprobs(model, batch)

    def reference_logprobs(self, batch: PackedBatch, samples: list[Sample]) -> torch.Tensor | None:
        """The frozen reference's log-probabilities (None when beta is 0): with LoRA, the policy with its
        adapter switched off (the base it started from)."""
        if self.config.loss.beta <= 0:
            return None
        if self.lora is not None:
            with self.model.disable_adapter():
                return self.sequence_logprobs(self.model, batch, samples)
        return self.sequence_logprobs(self.reference, batch, samples)

    def micro_batches(self, samples: list[Sample]) -> list[list[Sample]]:
        """The batch in slices of at most ``micro_batch_sequences`` (0: one slice, the batch as it came), a
        prompt's completions kept together where they fit, so each slice still computes its prompts once."""
        m = self.micro_batch_sequences
        if m <= 0 or len(samples) <= m:
            return [samples]
        slices: list[list[Sample]] = [[]]
        for group in prompt_groups(samples):
            for k in range(0, len(group), m):  # a group larger than a slice fills slices of its own
                part = [samples[i] for i in group[k:k + m]]
                if len(slices[-1]) + len(part) > m:
                    slices.append([])
                slices[-1].extend(part)
        return slices

    def train(self, step: int, policy_version: int, samples: list[Sample], max_completion_tokens: int) -> StepResult:
        assert self.model is not None and self.optimizer is not None and self.run_id is not None
        if step in self.results:
            log.info("step %d already applied: returning its recorded result", step)
            return self.results[step]
        if step <= self.last_step:
            raise StaleBatch(f"step: got {step}, run {self.run_id} is already past step {self.last_step}")
        lag = self.version - policy_version
        if not 0 <= lag <= self.config.max_policy_lag:
            raise StaleBatch(
                f"policy_version: batch sampled by version {policy_version}, policy is at {self.version} "
                f"(the run allows batches up to {self.config.max_policy_lag} versions behind)"
            )
        if lag:  # the policy that sampled is gone: the ratio needs the sampler's own log-probabilities
            missing = next((i for i, s in enumerate(samples) if s.old_logprobs is None), None)
            if missing is not None:
                raise SamplerLogprobsNeeded(missing, policy_version, self.version)
        started = time.monotonic()
        chunks = self.micro_batches(samples)
        weights = [1.0] * len(chunks)
        if self.ranks:  # this rank's share of each micro-batch (distributed.py)
            chunks, weights = map(list, zip(*(distributed.rank_share(c, self.ranks) for c in chunks)))
        packed = [pack(chunk, self.pad_id).to(self.device) for chunk in chunks]
        whole = BatchTotals(sequences=len(samples), tokens=sum(len(s.completion_ids) for s in samples))
        max_len = max(max_completion_tokens, *(len(s.completion_ids) for s in samples))  # the whole batch's
        with torch.no_grad():
            # Trained once, the batch's old policy is the current one: its log-probabilities are those of the
            # update's own forward pass (detached, below), not a second pass over the same weights (as TRL does).
            olds = [
                p.old_logprobs if p.old_logprobs is not None
                else self.sequence_logprobs(self.model, p, c) if self.config.updates_per_batch > 1 else None
                for c, p in zip(chunks, packed)
            ]
            refs = [self.reference_logprobs(p, c) for c, p in zip(chunks, packed)]
        losses, kls, clips, norms = [], [], [], []
        for update in range(self.config.updates_per_batch):
            self.optimizer.zero_grad(set_to_none=True)
            loss_sum = kl = clip = 0.0
            for chunk, p, old, ref, weight in zip(chunks, packed, olds, refs, weights):
                logprobs = self.sequence_logprobs(self.model, p, chunk)
                loss, stats = policy_loss(
                    logprobs, logprobs.detach() if old is None else old, p.advantages, p.completion_mask,
                    self.config.loss, max_len, ref, whole,
                )
                # Gradients add up over the micro-batches (and the ranks); weight 0: a rank's placeholder.
                self.scaler.scale(loss * weight).backward()
                loss_sum += weight * loss.item()
                kl, clip = kl + weight * stats.kl, clip + weight * stats.clip_ratio
            if self.ranks:
                loss_sum, kl, clip = distributed.all_sum([loss_sum, kl, clip])
            outcome = apply_gradients(self.model.parameters(), self.optimizer, self.scaler, self.config.max_grad_norm)
            if not outcome.applied:
                log.warning(
                    "step %d update %d skipped: gradient norm %s is not finite (%s loss scale now %g)",
                    step, update + 1, outcome.grad_norm, self.precision.dtype, outcome.loss_scale,
                )
            losses.append(loss_sum)
            kls.append(kl)
            clips.append(clip)
            if outcome.applied:
                norms.append(outcome.grad_norm)
        train_seconds = time.monotonic() - started

        started = time.monotonic()
        self.version += 1
        self.applied_steps.append(step)
        path = self.snapshot_path(self.run_id, self.version)
        self._publish(path)
        if self.writes:
            prune_snapshots(path.parent, self.keep_snapshots)
        if step % self.checkpoint_every == 0:
            self._save_checkpoint(self.run_dir(self.run_id) / "checkpoint")
        result = StepResult(
            step=step,
            version=self.current(),
            loss=sum(losses) / len(losses),
            kl=sum(kls) / len(kls),
            clip_ratio=sum(clips) / len(clips),
            # Over the applied updates: a float16 overflow skip is the scaler's protocol, logged above.
            grad_norm=sum(norms) / len(norms) if norms else float("nan"),
            sequences=len(samples),
            tokens=whole.tokens,
            train_seconds=train_seconds,
            snapshot_seconds=time.monotonic() - started,
        )
        self.results = {step: result}  # only the latest step can be retried
        return result

    def _publish(self, path: Path) -> None:
        """Write the policy as snapshot ``path`` (sharded: gathered whole on rank 0, which writes it)."""
        assert self.model is not None
        if self.lora is not None:  # the adapter alone: the orchestrator holds the base
            save_adapter(self.model, path)
            return
        whole = distributed.full_model_state(self.model) if self.ranks else None
        if self.writes:
            save_snapshot(self.model, self.base_dir, path, dtype=self.precision.dtype, state=whole)

    # ---- checkpoints -------------------------------------------------------
    def _save_checkpoint(self, path: Path) -> None:
        assert self.model is not None and self.optimizer is not None
        if self.ranks:  # every rank gathers; rank 0 writes (sharded optimizer state has names, not indices)
            model_state = distributed.full_model_state(self.model)
            optimizer_state = distributed.full_optimizer_state(self.model, self.optimizer)
        else:
            model_state = adapter_state(self.model) if self.lora else self.model.state_dict()
            optimizer_state = self.optimizer.state_dict()
        if not self.writes:
            self.checkpoint_step = self.last_step
            return
        tmp = path.with_name(path.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        torch.save(
            {
                "model": model_state,  # the float32 master weights
                "optimizer": optimizer_state,
                "scaler": self.scaler.state_dict(),  # empty unless float16
            },
            tmp / "weights.pt",
        )
        state = {
            "version": self.version, "last_step": self.last_step, "applied_steps": self.applied_steps,
            "config": asdict(self.config), "lora": self._lora_record(),
        }
        (tmp / "state.json").write_text(json.dumps(state, indent=2))
        shutil.rmtree(path, ignore_errors=True)
        tmp.rename(path)
        self.checkpoint_step = self.last_step
        log.info("checkpoint of step %d written to %s", self.last_step, path)

    def _lora_record(self) -> dict | None:
        if self.lora is None:
            return None
        return {"rank": self.lora.rank, "alpha": self.lora.alpha, "target_modules": list(self.lora.target_modules)}

    def _load_checkpoint(self, path: Path) -> None:
        assert self.model is not None and self.optimizer is not None and self.run_id is not None
        try:
            read: tuple[dict, list[int]] | CheckpointError | None = None
            if self.writes:
                state = json.loads((path / "state.json").read_text())
                read = state, checkpoint_lineage(state, path)
                if state.get("lora") != self._lora_record():
                    raise CheckpointError(
                        f"{path / 'state.json'}: written by a trainer with LoRA {state.get('lora')}, this one trains "
                        f"with {self._lora_record()} (--lora-rank, --lora-alpha, --lora-target-modules); start it as "
                        "before, or restart the run")
        except CheckpointError as err:
            read = err
        read = self._shared(read)  # every rank resumes, or refuses, alike
        if isinstance(read, CheckpointError):
            raise read
        state, applied_steps = read
        if self.ranks:
            blobs = torch.load(path / "weights.pt", map_location="cpu", weights_only=True) if self.writes else {}
            distributed.load_full_state(self.model, self.optimizer, blobs.get("model", {}), blobs.get("optimizer", {}))
        else:
            blobs = torch.load(path / "weights.pt", map_location=self.device, weights_only=True)
            if self.lora is not None:
                load_adapter_state(self.model, blobs["model"])
            else:
                self.model.load_state_dict(blobs["model"])
            self.optimizer.load_state_dict(blobs["optimizer"])
        if blobs.get("scaler"):
            self.scaler.load_state_dict(blobs["scaler"])
        self.version, self.applied_steps = state["version"], applied_steps
        self.checkpoint_step = self.last_step
        # Snapshots newer than the checkpoint were never confirmed: republish
        # the checkpoint's weights so the version number means one thing.
        if self.version > 0:
            self._publish(self.snapshot_path(self.run_id, self.version))


def checkpoint_lineage(state: dict, path: Path) -> list[int]:
    """The applied steps recorded in a checkpoint's ``state.json``."""
    steps = state.get("applied_steps")
    if steps is None:
        # Written before lineage was recorded. Steps only grow and each one
        # adds a version, so version == last_step means exactly 1..last_step.
        if state["version"] != state["last_step"]:
            raise CheckpointError(
                f"{path / 'state.json'}: no applied_steps and version {state['version']} != "
                f"last_step {state['last_step']}, so the lineage is unknown; restart the run"
            )
        steps = list(range(1, state["last_step"] + 1))
    if len(steps) != state["version"] or steps != sorted(set(steps)):
        raise CheckpointError(
            f"{path / 'state.json'}: applied_steps {steps} do not match version {state['version']} "
            "(expected one strictly increasing step per version)"
        )
    return steps
