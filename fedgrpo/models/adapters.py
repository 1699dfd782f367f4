"""LoRA adapters (peft): a policy trained in low rank, published and synced as its adapter alone.

With ``--lora-rank`` the trainer trains a LoRA adapter on the frozen base
policy (``lora_model``) and publishes each version as an adapter folder
(``save_adapter``: ``adapter_config.json`` and ``adapter_model.safetensors``,
written atomically like a full snapshot), so what moves to the orchestrator
each step is the adapter, not the model. ``is_adapter(folder)`` tells the two
kinds of version apart; the vLLM engine serves an adapter as a LoRA request
on the base it loaded, the transformers engine and the run's exported model
use ``merged`` (the base with the adapter folded in: a plain Hugging Face
model).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ._atomic import discard, publish_replace, staging_dir

ADAPTER_CONFIG = "adapter_config.json"
LORA_RANKS = (0, 1, 8, 16, 32, 64, 128, 256, 320, 512)  # what vLLM's max_lora_rank takes (0: LoRA off)


@dataclass(frozen=True)
class LoraSettings:
    """The adapter the trainer trains: rank r, scale alpha / r, on ``target_modules`` (peft's names, or
    ``all-linear``: every linear layer but the output head)."""

    rank: int
    alpha: float
    target_modules: tuple[str, ...] = field(default=("all-linear",))


def is_adapter(folder: Path) -> bool:
    """Whether a policy version's folder holds a LoRA adapter rather than a whole model."""
    return (Path(folder) / ADAPTER_CONFIG).is_file()


def adapter_rank(folder: Path) -> int:
    """The rank ``r`` an adapter folder declares."""
    import json

    return int(json.loads((Path(folder) / ADAPTER_CONFIG).read_text())["r"])


def lora_model(model, settings: LoraSettings):  # noqa: ANN001, ANN201
    """``model`` with a trainable LoRA adapter (its base weights frozen), starting equal to the base."""
    from peft import LoraConfig, get_peft_model

    targets = settings.target_modules
    config = LoraConfig(
        r=settings.rank, lora_alpha=settings.alpha, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
        target_modules=targets[0] if targets == ("all-linear",) else list(targets),
    )
    return get_peft_model(model, config)


def adapter_state(model) -> dict:  # noqa: ANN001
    """The adapter's weights alone (what a checkpoint needs besides the base)."""
    from peft import get_peft_model_state_dict

    return get_peft_model_state_dict(model)


def load_adapter_state(model, state: dict) -> None:  # noqa: ANN001
    from peft import set_peft_model_state_dict

    result = set_peft_model_state_dict(model, state)
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise ValueError(f"checkpoint: adapter weights the model has no place for: {unexpected[:5]}")


def save_adapter(model, out_dir: Path) -> Path:  # noqa: ANN001
    """Publish ``model``'s adapter as ``out_dir`` (staged, then renamed into place); returns ``out_dir``."""
    out_dir = Path(out_dir)
    staged = staging_dir(out_dir)
    try:
        model.save_pretrained(staged, safe_serialization=True)
        return publish_replace(staged, out_dir)
    except BaseException:
        discard(staged)
        raise


def merged(base_dir: Path, adapter_dir: Path, dtype=None):  # noqa: ANN001, ANN201
    """The base model at ``base_dir`` with the adapter at ``adapter_dir`` merged into its weights."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    return model.to(dtype) if dtype is not None else model
