"""The per-token GRPO loss and its aggregations (pure torch, no state).

Contract
--------
For completion ``i`` and token ``t``, with ``ratio = exp(logp_new - logp_old)``::

    per_token = -min(ratio * A_i, clip(ratio, 1 - eps_low, 1 + eps_high) * A_i)
                + beta * KL

``KL`` is the k3 estimator ``exp(ref - new) - (ref - new) - 1`` against a
frozen reference policy; it is computed only when ``beta > 0`` (the reference
log-probabilities may then be omitted). Padding tokens (mask 0) never count,
whatever they hold: they are selected away with ``torch.where`` before any
arithmetic, since masking by multiplication turns an overflow there into
``inf * 0 = NaN`` in the loss, its gradient and the stats.

Aggregations (``loss_type``), as in TRL's ``GRPOTrainer._compute_loss``:

- ``grpo``    mean over each completion's tokens, then mean over completions
              (DeepSeekMath GRPO);
- ``bnpo``    sum over all tokens / number of tokens in the batch;
- ``dapo``    as ``bnpo`` here (DAPO's token-level normalisation);
- ``dr_grpo`` sum over all tokens / (completions x max_completion_length)
              (Dr. GRPO: a constant normaliser, no length bias).

Gradients flow to the new log-probabilities only: old and reference
log-probabilities and the advantages are treated as constants. Every
denominator is clamped to >= 1, so an empty completion yields no NaN.

Micro-batches: given ``whole`` (:class:`BatchTotals` of the batch a slice
belongs to), the slice's loss and stats are its share of the whole batch's,
normalised by the whole batch's sequences and tokens, so the sum over the
slices is exactly the loss (and the gradient, and the stats) of the batch
in one piece, for every ``loss_type``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")


@dataclass(frozen=True)
class LossSettings:
    """Hyper-parameters of the loss; validated on construction."""

    loss_type: str = "bnpo"
    beta: float = 0.0  # KL coefficient; 0 disables the KL term and the reference model
    epsilon_low: float = 0.2  # lower clip: ratio >= 1 - epsilon_low
    epsilon_high: float = 0.3  # upper clip: ratio <= 1 + epsilon_high (DAPO "clip-higher")

    def __post_init__(self) -> None:
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {self.loss_type!r}")
        for name in ("beta", "epsilon_low", "epsilon_high"):
            value = getattr(self, name)
            is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
            # isfinite also rejects NaN, which would slip through a plain `< 0` test.
            if not is_number or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0 (range [0, inf)), got {value!r}")


@dataclass(frozen=True)
class BatchTotals:
    """The whole batch a micro-batch belongs to: what each aggregation divides by."""

    sequences: int
    tokens: int


@dataclass(frozen=True)
class LossStats:
    """Diagnostics of one loss evaluation (plain floats, safe to log)."""

    kl: float  # masked mean of the per-token k3 KL; 0.0 when beta == 0
    clip_ratio: float  # fraction of masked tokens where the clipped term was the active one
    tokens: int  # number of masked (real completion) tokens


def k3_kl(ref_logprobs: Tensor, logprobs: Tensor) -> Tensor:
    """Per-token k3 estimate of KL(new || ref): ``exp(ref - new) - (ref - new) - 1``.

    Unbiased for samples drawn from the new policy and always >= 0 (Schulman,
    "Approximating KL divergence"), unlike the plain log-ratio.
    """
    log_ratio = ref_logprobs - logprobs
    return torch.exp(log_ratio) - log_ratio - 1


def policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    completion_mask: Tensor,
    settings: LossSettings,
    max_completion_length: int,
    ref_logprobs: Tensor | None = None,
    whole: BatchTotals | None = None,
) -> tuple[Tensor, LossStats]:
    """Scalar GRPO loss of a batch, and its diagnostics; with ``whole``, this micro-batch's share of them.

    Shapes: ``logprobs``, ``old_logprobs``, ``ref_logprobs``, ``completion_mask``
    are [B, T]; ``advantages`` is [B]. The mask is 1 (or True) on real
    completion tokens and 0 on padding.
    """
    _check_shapes(logprobs, old_logprobs, advantages, completion_mask, ref_logprobs, settings, max_completion_length)
    valid = completion_mask.bool()
    mask = valid.to(logprobs.dtype)
    # Padding is replaced by 0 on the way in, not only zeroed on the way out:
    # an inf there would otherwise still reach the backward pass as 0 * inf.
    logprobs = _real_tokens(valid, logprobs)
    # Only the new policy is being optimised; everything else is data.
    old_logprobs = _real_tokens(valid, old_logprobs.detach())
    advantages = advantages.detach().to(logprobs.dtype).unsqueeze(1)  # [B, 1], broadcast over tokens

    ratio = torch.exp(logprobs - old_logprobs)
    clipped_ratio = torch.clamp(ratio, 1 - settings.epsilon_low, 1 + settings.epsilon_high)
    per_token_loss = -torch.min(ratio * advantages, clipped_ratio * advantages)

    per_token_kl = None
    if settings.beta > 0:
        per_token_kl = _real_tokens(valid, k3_kl(_real_tokens(valid, ref_logprobs.detach()), logprobs))
        per_token_loss = per_token_loss + settings.beta * per_token_kl

    masked_loss = _real_tokens(valid, per_token_loss)
    tokens = mask.sum()
    sequences = logprobs.size(0) if whole is None else whole.sequences
    all_tokens = tokens if whole is None else tokens.new_tensor(float(whole.tokens))
    if settings.loss_type == "grpo":
        loss = (masked_loss.sum(-1) / mask.sum(-1).clamp(min=1.0)).sum() / sequences
    elif settings.loss_type in ("bnpo", "dapo"):
        # TRL's dapo divides by the token count of the global batch across
        # processes; with a single process that is this batch, i.e. bnpo.
        loss = masked_loss.sum() / all_tokens.clamp(min=1.0)
    else:  # dr_grpo: a constant normaliser, so long and short completions weigh alike per token
        loss = masked_loss.sum() / (sequences * max_completion_length)

    with torch.no_grad():
        # The min picks the clipped term (and the token's gradient vanishes) only
        # below the band for a negative advantage or above it for a positive one;
        # the other out-of-band tokens keep the unclipped term. TRL counts the same.
        is_low_clipped = (ratio < 1 - settings.epsilon_low) & (advantages < 0)
        is_high_clipped = (ratio > 1 + settings.epsilon_high) & (advantages > 0)
        clipped = is_low_clipped | is_high_clipped
        denominator = all_tokens.clamp(min=1.0)
        stats = LossStats(
            kl=0.0 if per_token_kl is None else float(per_token_kl.sum() / denominator),
            clip_ratio=float((clipped & valid).sum() / denominator),
            tokens=int(tokens.item()),
        )
    return loss, stats


def _real_tokens(valid: Tensor, values: Tensor) -> Tensor:
    """``values`` on real tokens, exactly 0 on padding (whatever it held)."""
    return torch.where(valid, values, torch.zeros((), dtype=values.dtype, device=values.device))


def token_logprobs(logits: Tensor, token_ids: Tensor, temperature: float = 1.0) -> Tensor:
    """Log-probability of each given token under ``softmax(logits / temperature)``:
    [B, T, V] logits, [B, T] ids -> [B, T] (float32).

    The temperature is the sampler's: a completion drawn at temperature 0.7
    came from ``softmax(logits / 0.7)``, so the ratio and the KL must use that
    policy (TRL's GRPOTrainer divides the same way for policy, old and
    reference log-probabilities).

    Equal to ``(logits.float() / temperature).log_softmax(-1).gather(-1, ids)``,
    but one sequence at a time, so at most one [T, V] float32 temporary exists
    instead of a full [B, T, V] one. Float32 because a bf16/fp16 normaliser
    over a large vocabulary loses precision; log_softmax rather than
    ``logit - logsumexp`` because it subtracts the max first, which keeps
    digits when logits are large.
    """
    if logits.dim() != 3 or token_ids.shape != logits.shape[:2]:
        raise ValueError(
            f"expected logits [B, T, V] and token_ids [B, T], got {tuple(logits.shape)} and {tuple(token_ids.shape)}"
        )
    is_number = isinstance(temperature, (int, float)) and not isinstance(temperature, bool)
    if not is_number or not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    if logits.size(0) == 0:
        return logits.new_empty(token_ids.shape, dtype=torch.float32)
    ids = token_ids.long().unsqueeze(-1)
    rows = [
        (row.float() / temperature).log_softmax(-1).gather(-1, row_ids) for row, row_ids in zip(logits, ids)
    ]
    return torch.stack(rows).squeeze(-1)


def _check_shapes(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    completion_mask: Tensor,
    ref_logprobs: Tensor | None,
    settings: LossSettings,
    max_completion_length: int,
) -> None:
    """Fail loudly on mismatched inputs: silent broadcasting would corrupt the loss."""
    if logprobs.dim() != 2:
        raise ValueError(f"logprobs must be [B, T], got shape {tuple(logprobs.shape)}")
    if logprobs.size(0) == 0:
        raise ValueError("logprobs must hold at least one completion (B >= 1)")
    for name, tensor in (("old_logprobs", old_logprobs), ("completion_mask", completion_mask)):
        if tensor.shape != logprobs.shape:
            raise ValueError(f"{name} must have shape {tuple(logprobs.shape)}, got {tuple(tensor.shape)}")
    if advantages.shape != logprobs.shape[:1]:
        raise ValueError(f"advantages must have shape ({logprobs.size(0)},), got {tuple(advantages.shape)}")
    if settings.beta > 0:
        if ref_logprobs is None:
            raise ValueError(f"ref_logprobs is required when beta > 0 (beta={settings.beta})")
        if ref_logprobs.shape != logprobs.shape:
            raise ValueError(f"ref_logprobs must have shape {tuple(logprobs.shape)}, got {tuple(ref_logprobs.shape)}")
    is_int = isinstance(max_completion_length, int) and not isinstance(max_completion_length, bool)
    if not is_int or max_completion_length < 1:
        raise ValueError(f"max_completion_length must be an int >= 1, got {max_completion_length!r}")
    longest = int(completion_mask.to(torch.int64).sum(-1).max())
    if longest > max_completion_length:
        # dr_grpo's normaliser assumes no completion exceeds this length.
        raise ValueError(f"a completion has {longest} tokens, more than max_completion_length={max_completion_length}")
