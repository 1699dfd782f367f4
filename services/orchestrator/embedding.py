"""phi: the frozen encoder that places questions and auxiliary items in one space.

``PolicyEmbedder`` mean-pools the last hidden states of the frozen base
policy over a text's tokens (the paper's default: an encoder derived from the
foundation model). It loads its own copy of the base weights, which never
change, so embeddings stay comparable across policy versions. ``embed``
returns a float64 matrix [n, d]; results are cached per text.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer


class PolicyEmbedder:
    def __init__(self, model_dir: Path, device: str = "cpu", dtype: str = "float32", batch_size: int = 32) -> None:
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModel.from_pretrained(model_dir, dtype=getattr(torch, dtype)).to(device).eval()
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.cache: dict[str, np.ndarray] = {}
        self.lock = threading.Lock()

    @torch.no_grad()
    def _embed_batch(self, texts: list[str]) -> np.ndarray:
        ids = [self.tokenizer(t, add_special_tokens=False)["input_ids"] or [0] for t in texts]
        width = max(len(i) for i in ids)
        pad = self.tokenizer.pad_token_id or 0
        input_ids = torch.tensor([i + [pad] * (width - len(i)) for i in ids], device=self.device)
        mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i in ids], device=self.device)
        hidden = self.model(input_ids=input_ids, attention_mask=mask).last_hidden_state.float()
        pooled = (hidden * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)
        return pooled.cpu().numpy().astype(np.float64)

    def embed(self, texts: list[str]) -> np.ndarray:
        with self.lock:
            missing = list(dict.fromkeys(t for t in texts if t not in self.cache))
            for start in range(0, len(missing), self.batch_size):
                chunk = missing[start : start + self.batch_size]
                for text, vector in zip(chunk, self._embed_batch(chunk)):
                    self.cache[text] = vector
            return np.stack([self.cache[t] for t in texts])
