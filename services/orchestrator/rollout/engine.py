"""The contract every rollout engine keeps.

``generate(prompts, sampling)`` returns ``sampling.n`` completions per prompt.
Each completion carries the log-probability of every sampled token under the
*sampling* distribution as TRL defines it: ``log_softmax(logits / T)`` at
temperature ``T`` (no top-p / top-k renormalisation; ``T = 0``, greedy, gives
the untempered ``log_softmax(logits)``). The trainer computes the same
quantity, so the GRPO ratio of the first update starts at 1.

``sampling.seed`` set: the completions depend only on (seed, prompts,
sampling settings, loaded weights), never on what the engine generated
before; unset: whatever the engine's random state gives.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from fedgrpo.models.generation import Completion


@dataclass(frozen=True)
class SamplingSettings:
    n: int = 1
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    max_tokens: int = 48
    # Seeds this call's sampling; None: unseeded (the Generate RPC).
    seed: int | None = None

    @staticmethod
    def step_seed(run_seed: int, step: int) -> int:
        """The sampling seed of a run's step: a function of (run seed, step) only, so a
        resumed run samples its remaining steps as an uninterrupted one would."""
        digest = hashlib.sha256(f"fedgrpo-sampling:{run_seed}:{step}".encode()).digest()
        return int.from_bytes(digest[:8], "big") >> 1  # 63 bits: a valid torch seed


# One completion: its tokens, their log-probabilities at the sampling temperature, and its text.
Sampled = Completion


class RolloutEngine(Protocol):
    name: str
    # Longest prompt + completion in tokens this engine serves.
    max_model_len: int

    def generate(self, prompts: list[list[int]], sampling: SamplingSettings) -> list[list[Sampled]]:
        """``n`` completions for each prompt (given as token ids), in prompt order."""
        ...

    def load_weights(self, weights_path: Path) -> None:
        """Swap in the policy snapshot at ``weights_path`` (same architecture)."""
        ...

    def close(self) -> None: ...
