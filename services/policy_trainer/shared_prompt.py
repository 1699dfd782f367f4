"""Completion log-probabilities with each prompt computed once for its whole group.

GRPO samples G completions per prompt, and on short answers the prompt is
most of every sequence (the main job: ~53 prompt tokens, ~6-20 completion
tokens), so the packed batch (``batching.pack``) spends most of its forward
and backward on G identical copies of each prompt. Here each distinct prompt
goes through the model once, its key/value cache is repeated for its
completions (``repeat_interleave``: gradients from every completion flow back
into the one prompt pass), and the completions run on top of it, right-padded.
The result equals the packed path's up to float rounding (tested), in the
packed layout: ``[B, C]`` float32, row i the i-th sample, column t its t-th
completion token (0 past its end), C the longest completion.

``prompt_groups(samples)`` lists the samples of each distinct prompt, in
order of first appearance. ``shared_prompt_logprobs(model, samples, ...)`` is
the computation. The model must keep a key/value cache through its forward
(transformers decoder models do; gradient checkpointing turns the cache off,
so the trainer uses the packed path then).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .batching import Sample
from .loss import token_logprobs

__all__ = ["prompt_groups", "shared_prompt_logprobs", "prompt_share"]


def prompt_groups(samples: Sequence[Sample]) -> list[list[int]]:
    """Indices of the samples of each distinct prompt, in order of first appearance."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, s in enumerate(samples):
        groups.setdefault(tuple(s.prompt_ids), []).append(i)
    return list(groups.values())


def prompt_share(samples: Sequence[Sample]) -> float:
    """Fraction of the packed batch's real tokens that are repeated prompt tokens (what sharing saves)."""
    total = sum(len(s.prompt_ids) + len(s.completion_ids) for s in samples)
    once = sum(len(samples[g[0]].prompt_ids) for g in prompt_groups(samples)) + sum(
        len(s.completion_ids) for s in samples)
    return 1.0 - once / total if total else 0.0


def shared_prompt_logprobs(
    model, samples: Sequence[Sample], pad_id: int, temperature: float, device: torch.device, autocast,
) -> torch.Tensor:
    """[B, C] float32 log-probabilities of each sample's completion tokens (see module docstring)."""
    width = max(len(s.completion_ids) for s in samples)
    out = torch.zeros((len(samples), width), dtype=torch.float32, device=device)
    for group in prompt_groups(samples):
        prompt = list(samples[group[0]].prompt_ids)
        if not prompt:
            raise ValueError(f"sample {group[0]}: an empty prompt (at least one token is needed)")
        g, p = len(group), len(prompt)
        c = max(len(samples[i].completion_ids) for i in group)
        ids = torch.full((g, c), pad_id, dtype=torch.long)
        mask = torch.zeros((g, p + c), dtype=torch.long)
        mask[:, :p] = 1
        for row, i in enumerate(group):
            completion = list(samples[i].completion_ids)
            ids[row, : len(completion)] = torch.tensor(completion, dtype=torch.long)
            mask[row, p : p + len(completion)] = 1
        ids, mask = ids.to(device), mask.to(device)
        with autocast():
            head = model(input_ids=torch.tensor([prompt], device=device), use_cache=True, logits_to_keep=1)
            cache = head.past_key_values
            cache.batch_repeat_interleave(g)
            positions = torch.arange(p, p + c, device=device).expand(g, c)
            tail = model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                         use_cache=True, logits_to_keep=c)
        # The prompt's last position predicts completion token 0; completion position t predicts t + 1.
        logits = torch.cat([head.logits[:, -1:, :].expand(g, 1, -1), tail.logits[:, :-1, :]], dim=1)
        logprobs = token_logprobs(logits, ids, temperature)
        for row, i in enumerate(group):
            n = len(samples[i].completion_ids)
            out[i, :n] = logprobs[row, :n]
    return out
