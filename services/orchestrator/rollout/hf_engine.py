"""transformers ``generate`` rollout engine: the fallback where vLLM is absent.

Sampling is ``fedgrpo.models.generation.sample`` (logprobs as the trainer
computes them; a seeded call leaves the process's RNG as it was). A policy
version that is a LoRA adapter is merged into the base on load.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from fedgrpo.models.adapters import is_adapter, merged
from fedgrpo.models.generation import sample

from .engine import Sampled, SamplingSettings
from .limits import read_model_config, resolve_max_model_len

log = logging.getLogger(__name__)


class TransformersEngine:
    name = "transformers"

    def __init__(
        self, model_dir: Path, device: str = "cpu", dtype: str = "float32", seed: int = 0,
        max_model_len: int | None = None, **_: object,
    ) -> None:
        # Not enforced by generate; bounds what runs and Generate calls may ask (as with vLLM).
        self.max_model_len = resolve_max_model_len(max_model_len, read_model_config(model_dir), dtype=dtype)
        self.device = torch.device(device)
        self.dtype = getattr(torch, dtype)
        self.base_dir = Path(model_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = self._load(model_dir)
        torch.manual_seed(seed)

    def _load(self, path: Path):
        if is_adapter(path):  # a LoRA version: the base with the adapter merged in
            return merged(self.base_dir, path, self.dtype).to(self.device).eval()
        return AutoModelForCausalLM.from_pretrained(path, dtype=self.dtype).to(self.device).eval()

    def generate(self, prompts: list[list[int]], sampling: SamplingSettings) -> list[list[Sampled]]:
        return sample(self.model, self.tokenizer, prompts, n=sampling.n, temperature=sampling.temperature,
                      top_p=sampling.top_p, max_tokens=sampling.max_tokens, seed=sampling.seed)

    def load_weights(self, weights_path: Path) -> None:
        self.model = self._load(weights_path)

    def close(self) -> None:
        pass
