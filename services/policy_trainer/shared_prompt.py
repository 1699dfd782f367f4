"""Completion log-probabilities with each prompt computed once for its group, and no padding.

GRPO samples G completions per prompt, and on short answers the prompt is
most of every sequence (the main job: ~53 prompt tokens, ~6-20 completion
tokens), so the packed batch (``batching.pack``) spends most of its forward
and backward on G identical copies of each prompt, and on padding every
completion to the longest one. Here each group is one row: its prompt once,
then its completions back to back, no padding between them::

    [ prompt (P) | completion 1 (L1) | completion 2 (L2) | ... ]

An attention mask keeps them apart: a prompt token sees the prompt before
it; a completion token sees the whole prompt and its own completion so far,
never another completion. Position ids restart at P for every completion,
as the sampler saw it. Gradients from every completion flow into the one
prompt. Rows of different groups are right-padded to the longest row (pad
tokens attend to themselves only and are never read). The result equals the
packed path's up to float rounding (tested), in the packed layout: ``[B, C]``
float32, row i the i-th sample, column t its t-th completion token (0 past
its end), C the longest completion.

The mask is a custom 4D one, which transformers passes to the attention
as given for its ``sdpa`` and ``eager`` implementations (``supports_tree_mask``);
kernels that take no mask (flash attention) cannot keep completions apart, so
the trainer uses the packed path for them. No key/value cache is used, so
this works with gradient checkpointing too.

``prompt_groups(samples)`` lists the samples of each distinct prompt, in
order of first appearance; ``group_rows`` lays a batch out as above;
``shared_prompt_logprobs(model, samples, ...)`` is the computation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .batching import Sample
from .loss import token_logprobs

__all__ = [
    "prompt_groups", "prompt_share", "padding_share", "group_rows", "GroupRows", "shared_prompt_logprobs",
    "attention_of", "supports_tree_mask", "TREE_MASK_ATTENTION",
]

# Completion tokens whose float32 log-softmax is taken at once (bounds the [tokens, vocabulary] temporary).
LOGPROB_SLICE = 1024
# Attention implementations that apply a caller's 4D mask as given.
TREE_MASK_ATTENTION = ("sdpa", "eager")


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


def padding_share(samples: Sequence[Sample]) -> float:
    """Fraction of the packed batch's positions (``pack``: B x (longest prompt + longest completion)) that
    are padding."""
    if not samples:
        return 0.0
    width = max(len(s.prompt_ids) for s in samples) + max(len(s.completion_ids) for s in samples)
    real = sum(len(s.prompt_ids) + len(s.completion_ids) for s in samples)
    return 1.0 - real / (len(samples) * width)


def attention_of(model) -> str | None:
    """The attention implementation transformers runs ``model`` with (``sdpa``, ``eager``, ...)."""
    return getattr(model.config, "_attn_implementation", None)


def supports_tree_mask(model) -> bool:
    """Whether ``model``'s attention applies a caller's 4D mask."""
    return attention_of(model) in TREE_MASK_ATTENTION


@dataclass(frozen=True)
class GroupRows:
    """A batch laid out one group per row (module docstring)."""

    input_ids: torch.Tensor  # [R, T]
    position_ids: torch.Tensor  # [R, T]
    allowed: torch.Tensor  # [R, 1, T, T] bool: query t may attend to key s
    rows: list[int]  # sample i's row
    predictors: list[list[int]]  # sample i: the columns whose logits predict its completion tokens, in order
    first_predictor: int  # the smallest column in any of predictors (logits before it are not needed)


def group_rows(samples: Sequence[Sample], pad_id: int) -> GroupRows:
    """Lay ``samples`` out one prompt group per row (module docstring); raises ``ValueError`` on an empty
    batch or an empty prompt. An empty completion has no predictors."""
    if not samples:
        raise ValueError("samples: at least one sample is needed")
    groups = prompt_groups(samples)
    widths = []
    for group in groups:
        if not samples[group[0]].prompt_ids:
            raise ValueError(f"sample {group[0]}: an empty prompt (at least one token is needed)")
        widths.append(len(samples[group[0]].prompt_ids) + sum(len(samples[i].completion_ids) for i in group))
    r, t = len(groups), max(widths)
    ids = torch.full((r, t), pad_id, dtype=torch.long)
    positions = torch.zeros((r, t), dtype=torch.long)
    segment = torch.full((r, t), -1, dtype=torch.long)  # -1 padding, 0 prompt, k the row's k-th completion
    rows, predictors = [0] * len(samples), [[] for _ in samples]
    for row, group in enumerate(groups):
        prompt = list(samples[group[0]].prompt_ids)
        p = len(prompt)
        ids[row, :p] = torch.tensor(prompt, dtype=torch.long)
        positions[row, :p] = torch.arange(p)
        segment[row, :p] = 0
        col = p
        for k, i in enumerate(group, start=1):
            completion = list(samples[i].completion_ids)
            n = len(completion)
            ids[row, col : col + n] = torch.tensor(completion, dtype=torch.long)
            positions[row, col : col + n] = torch.arange(p, p + n)
            segment[row, col : col + n] = k
            rows[i] = row
            # The prompt's last token predicts the completion's first; its token j predicts token j + 1.
            predictors[i] = [p - 1, *range(col, col + n - 1)] if n else []
            col += n
    query, key = segment[:, :, None], segment[:, None, :]
    causal = torch.ones((t, t), dtype=torch.bool).tril()
    allowed = causal & (key >= 0) & (query >= 0) & ((key == 0) | (key == query))
    allowed |= torch.eye(t, dtype=torch.bool)  # a padding row attends to itself (an empty row gives NaN)
    first = min((p[0] for p in predictors if p), default=0)
    return GroupRows(ids, positions, allowed[:, None], rows, predictors, first)


def shared_prompt_logprobs(
    model, samples: Sequence[Sample], pad_id: int, temperature: float, device: torch.device, autocast,
) -> torch.Tensor:
    """[B, C] float32 log-probabilities of each sample's completion tokens (see module docstring)."""
    layout = group_rows(samples, pad_id)
    mask = layout.allowed.to(device)
    if attention_of(model) == "eager":
        # eager attention adds the mask to the scores: 0 where allowed, the dtype's lowest elsewhere.
        dtype = next(model.parameters()).dtype
        mask = torch.zeros(mask.shape, dtype=dtype, device=device).masked_fill(~mask, torch.finfo(dtype).min)
    keep = layout.input_ids.shape[1] - layout.first_predictor
    with autocast():
        out = model(
            input_ids=layout.input_ids.to(device), position_ids=layout.position_ids.to(device),
            attention_mask=mask, use_cache=False, logits_to_keep=keep,
        )
    logits = out.logits  # [R, keep, V]: column c of row r is row r * keep + c - first_predictor of the flat view
    flat, targets, rows, columns = [], [], [], []
    for i, s in enumerate(samples):
        n = len(s.completion_ids)
        flat.extend(layout.rows[i] * keep + c - layout.first_predictor for c in layout.predictors[i])
        targets.extend(s.completion_ids)
        rows.extend([i] * n)
        columns.extend(range(n))
    width = max(len(s.completion_ids) for s in samples)
    result = torch.zeros((len(samples), width), dtype=torch.float32, device=device)
    if not flat:
        return result
    # One gather of every predicting position (one gradient scatter back, not one full-size gradient per
    # sample), then the float32 log-softmax a slice at a time so at most one [slice, V] float32 temporary.
    chosen = logits.reshape(-1, logits.shape[-1]).index_select(0, torch.tensor(flat, device=device))
    ids = torch.tensor(targets, dtype=torch.long, device=device)
    values = torch.cat([
        token_logprobs(part[None], part_ids[None], temperature)[0]
        for part, part_ids in zip(chosen.split(LOGPROB_SLICE), ids.split(LOGPROB_SLICE))
    ])
    result[torch.tensor(rows, device=device), torch.tensor(columns, device=device)] = values
    return result
