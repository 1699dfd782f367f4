"""Configuration of the policy trainer service.

CPU and GPU differ only here: ``device`` (cpu / cuda) and ``dtype`` (the
compute and snapshot dtype; weights and optimizer state stay float32).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from fedgrpo.advantage_bound import DEFAULT_MAX_ADVANTAGE
from fedgrpo.settings import CommaList, ServiceSettings


class TrainerSettings(ServiceSettings):
    """The GPU trainer: holds the policy and its frozen reference, applies the loss."""

    certificate_role: ClassVar[str | None] = "trainer"

    model_config = SettingsConfigDict(
        env_prefix="FEDGRPO_TRAINER_",
        cli_prog_name="fedgrpo trainer",
    )

    port: int = Field(50052, ge=1, le=65535, description="TCP port to listen on.")
    max_message_bytes: int = Field(
        64 * 1024 * 1024, ge=1024, le=1024**3,
        description="Largest gRPC message accepted or sent (a training batch); larger: RESOURCE_EXHAUSTED.",
    )
    allowed_callers: CommaList = Field(
        default_factory=lambda: ["orchestrator"],
        description="With TLS: identities (certificate common names) allowed to call this trainer, "
        "comma-separated; empty: any the federation CA signed.",
    )
    model: str = Field(
        "smollm2-135m-instruct",
        description="Base policy: smollm2-135m-instruct, tiny-llama, or a Hugging Face folder.",
    )
    cache_dir: Path = Field(Path(".cache/models"), description="Where prepared base models are cached.")
    state_dir: Path = Field(
        Path(".cache/trainer"),
        description="Policy snapshots and checkpoints; must be shared with the orchestrator.",
    )
    device: Literal["cpu", "cuda"] = Field("cpu", description="Device of the policy and reference.")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32",
        description=(
            "Compute dtype of forward and backward (torch.autocast) and dtype of the published snapshots "
            "(set it to the orchestrator's --dtype). Weights, AdamW state and checkpoints stay float32 "
            "(master weights) in every case. bfloat16: for a GPU, or a CPU with bf16 support; float16: "
            "GPU, with dynamic loss scaling; float32: no autocast."
        ),
    )
    torch_threads: int = Field(0, ge=0, description="torch CPU threads; 0 keeps torch's default.")
    keep_snapshots: int = Field(2, ge=1, description="Policy snapshots kept per run (older ones deleted).")
    checkpoint_every: int = Field(
        5,
        ge=1,
        description=(
            "Write a resumable checkpoint (weights, optimizer, applied steps) every N steps. After a "
            "trainer restart the orchestrator replays the steps since the last checkpoint from its log."
        ),
    )
    gradient_checkpointing: bool = Field(False, description="Trade compute for memory on large models.")
    micro_batch_sequences: int = Field(
        0, ge=0,
        description="Train a batch in slices of at most this many sequences, adding up their gradients before "
        "the one optimizer step (gradient accumulation): the same update as the batch in one piece, for every "
        "loss type, in the memory of one slice. 0: the whole batch at once.",
    )
    share_prompts: bool = Field(
        True,
        description="Train each prompt's group of completions as one unpadded row, the prompt computed once for "
        "all of them (a mask keeps the completions apart) instead of every completion padded with its own copy "
        "of the prompt: the same log-probabilities and gradients, fewer tokens. Needs attention that takes a "
        "custom mask (sdpa, eager); with another (flash attention) the trainer falls back to the padded batch.",
    )
    lora_rank: int = Field(
        0, ge=0, le=1024,
        description="Train a LoRA adapter of this rank on the frozen base policy (peft) instead of every weight, "
        "and publish each version as the adapter alone (megabytes, not the model): for policies whose full "
        "weights are too large to move each step. The orchestrator then needs --max-lora-rank >= this with the "
        "vllm backend. 0: full fine-tuning.",
    )
    lora_alpha: float = Field(0, ge=0, description="LoRA scale numerator (the update is scaled by alpha / rank); "
                              "0: twice the rank.")
    lora_target_modules: CommaList = Field(
        default_factory=lambda: ["all-linear"],
        description="Modules that get an adapter, comma-separated peft names (q_proj,v_proj, ...); all-linear: "
        "every linear layer but the output head.",
    )
    max_advantage: float = Field(
        DEFAULT_MAX_ADVANTAGE, gt=0, le=1e6,
        description="Largest |advantage| trained on: larger ones in a batch are clamped to it (counted in "
        "TrainMetrics.advantages_clamped); non-finite ones are refused.",
    )
