"""The contract every rollout engine keeps."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class SamplingSettings:
    n: int = 1
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    max_tokens: int = 48


@dataclass(frozen=True)
class Sampled:
    """One completion: its tokens, their raw log-probabilities, and its text."""

    token_ids: list[int]
    logprobs: list[float]
    text: str


class RolloutEngine(Protocol):
    name: str

    def generate(self, prompts: list[list[int]], sampling: SamplingSettings) -> list[list[Sampled]]:
        """``n`` completions for each prompt (given as token ids), in prompt order."""
        ...

    def load_weights(self, weights_path: Path) -> None:
        """Swap in the policy snapshot at ``weights_path`` (same architecture)."""
        ...

    def close(self) -> None: ...
