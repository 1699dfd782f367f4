"""A tiny reward model for tests and the example federation: the tiny Llama with a
sequence-classification head (one logit), randomly initialised.

It scores (question, candidate) pairs deterministically but knows nothing:
it exists so that the reward-model evaluator runs on a real Hugging Face
``LlamaForSequenceClassification`` folder offline. ``build_tiny_reward_model(
out_dir, seed)`` is deterministic for a seed, offline, idempotent and atomic
like :func:`fedgrpo.models.tiny.build_tiny_model`; the folder loads with
``AutoModelForSequenceClassification`` and ``AutoTokenizer``.
"""

from __future__ import annotations

from pathlib import Path

from ._atomic import build_folder, is_complete
from .tiny import TINY_REQUIRED_FILES, _build_model, _build_tokenizer

__all__ = ["build_tiny_reward_model", "TINY_REWARD_MODEL"]

TINY_REWARD_MODEL = "tiny-reward-model"


def build_tiny_reward_model(out_dir: Path, seed: int = 0) -> Path:
    out_dir = Path(out_dir)
    if is_complete(out_dir, TINY_REQUIRED_FILES):
        return out_dir

    def write(staged: Path) -> None:
        import torch
        from transformers import LlamaForSequenceClassification

        tokenizer = _build_tokenizer()
        config = _build_model(tokenizer, seed).config
        config.num_labels = 1
        config.tie_word_embeddings = False
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = LlamaForSequenceClassification(config).to(torch.float32)
        model.save_pretrained(staged, safe_serialization=True)
        tokenizer.save_pretrained(staged)

    return build_folder(out_dir, TINY_REQUIRED_FILES, write, "tiny reward model build")
