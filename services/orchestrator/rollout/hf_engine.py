"""transformers ``generate`` rollout engine: the fallback where vLLM is absent.

Logprobs are ``log_softmax(logits / T)`` of the raw logits ``generate``
reports (before its top-p warper), as the trainer computes them. A seeded call
samples under its own seed and leaves the process's global RNG as it was. A
policy version that is a LoRA adapter is merged into the base on load.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from fedgrpo.models.adapters import is_adapter, merged

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
        if sampling.seed is None:
            return self._generate(prompts, sampling)
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(sampling.seed)
            return self._generate(prompts, sampling)

    @torch.no_grad()
    def _generate(self, prompts: list[list[int]], sampling: SamplingSettings) -> list[list[Sampled]]:
        pad = self.tokenizer.pad_token_id
        pad = pad if pad is not None else self.tokenizer.eos_token_id
        width = max(len(p) for p in prompts)
        # Left padding keeps every prompt's last token in the last column.
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=self.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self.device)
        greedy = sampling.temperature == 0
        out = self.model.generate(
            input_ids=ids,
            attention_mask=mask,
            do_sample=not greedy,
            temperature=None if greedy else sampling.temperature,
            top_p=None if greedy else sampling.top_p,
            top_k=None,
            max_new_tokens=sampling.max_tokens,
            num_return_sequences=sampling.n,
            pad_token_id=pad,
            output_logits=True,
            return_dict_in_generate=True,
        )
        new = out.sequences[:, width:]
        # out.logits are raw (before temperature and top-p): temper them as the trainer does.
        logits = torch.stack(out.logits, dim=1).float()
        logprobs = (logits if greedy else logits / sampling.temperature).log_softmax(-1)
        token_lp = logprobs.gather(-1, new.unsqueeze(-1)).squeeze(-1)
        eos = set(self.model.generation_config.eos_token_id if isinstance(
            self.model.generation_config.eos_token_id, list) else [self.model.generation_config.eos_token_id])
        groups: list[list[Sampled]] = [[] for _ in prompts]
        for row in range(new.shape[0]):
            toks = new[row].tolist()
            length = len(toks)
            for i, t in enumerate(toks):
                if t in eos:
                    length = i + 1
                    break
            toks = toks[:length]
            text = self.tokenizer.decode(toks, skip_special_tokens=True)
            groups[row // sampling.n].append(Sampled(toks, token_lp[row, :length].tolist(), text))
        return groups

    def load_weights(self, weights_path: Path) -> None:
        self.model = self._load(weights_path)

    def close(self) -> None:
        pass
