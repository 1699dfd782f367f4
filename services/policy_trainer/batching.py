"""Pack variable-length (prompt, completion) pairs into padded tensors.

Layout, as TRL does it: prompts are left-padded and completions right-padded,
so every completion starts at the same column ``prompt_width`` and the model
only has to produce logits for the last ``completion_width + 1`` positions.
Position ids count real tokens only, matching what the sampler (vLLM) saw.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Sample:
    prompt_ids: Sequence[int]
    completion_ids: Sequence[int]
    # Sampler log-probabilities of completion_ids; None to recompute them.
    old_logprobs: Sequence[float] | None
    advantage: float


@dataclass(frozen=True)
class PackedBatch:
    input_ids: torch.Tensor  # [B, P + C]
    attention_mask: torch.Tensor  # [B, P + C]
    position_ids: torch.Tensor  # [B, P + C]
    completion_ids: torch.Tensor  # [B, C]
    completion_mask: torch.Tensor  # [B, C] float, 1 on real completion tokens
    old_logprobs: torch.Tensor | None  # [B, C], None when any sample lacks them
    advantages: torch.Tensor  # [B]
    prompt_width: int

    @property
    def completion_width(self) -> int:
        return self.completion_ids.shape[1]

    def to(self, device: torch.device | str) -> PackedBatch:
        moved = {
            k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in self.__dict__.items()
        }
        return PackedBatch(**moved)


def pack(samples: Sequence[Sample], pad_id: int) -> PackedBatch:
    if not samples:
        raise ValueError("samples: at least one sample is needed")
    b = len(samples)
    p = max(len(s.prompt_ids) for s in samples)
    c = max(len(s.completion_ids) for s in samples)
    input_ids = torch.full((b, p + c), pad_id, dtype=torch.long)
    attention = torch.zeros((b, p + c), dtype=torch.long)
    completion_ids = torch.full((b, c), pad_id, dtype=torch.long)
    completion_mask = torch.zeros((b, c), dtype=torch.float32)
    have_old = all(s.old_logprobs is not None for s in samples)
    old = torch.zeros((b, c), dtype=torch.float32) if have_old else None
    for i, s in enumerate(samples):
        lp, lc = len(s.prompt_ids), len(s.completion_ids)
        input_ids[i, p - lp : p] = torch.tensor(list(s.prompt_ids), dtype=torch.long)
        input_ids[i, p : p + lc] = torch.tensor(list(s.completion_ids), dtype=torch.long)
        attention[i, p - lp : p + lc] = 1
        completion_ids[i, :lc] = input_ids[i, p : p + lc]
        completion_mask[i, :lc] = 1.0
        if old is not None:
            old[i, :lc] = torch.tensor(list(s.old_logprobs), dtype=torch.float32)
    position_ids = (attention.cumsum(dim=1) - 1).clamp(min=0)
    advantages = torch.tensor([s.advantage for s in samples], dtype=torch.float32)
    return PackedBatch(
        input_ids, attention, position_ids, completion_ids, completion_mask, old, advantages, p
    )
