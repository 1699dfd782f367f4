"""Mixed precision for the policy trainer: float32 master weights, low-precision compute.

Contract
--------
``Precision(device, dtype)`` says how the trainer computes; ``dtype`` is the
trainer's ``--dtype`` and is also the serving dtype of its snapshots.

- The trainable weights and the AdamW state are always float32 (the master
  copy). A bf16 weight cannot take an update below half its rounding step
  (most updates at lr 1e-5..1e-6), so stepping low-precision weights in place
  silently loses most of training.
- ``autocast()`` runs forward and backward in ``dtype`` (torch.autocast:
  matmuls in the low precision, softmax, norms and the loss in float32);
  float32 runs without it. CPU and GPU take the same path: only ``device``
  differs.
- ``grad_scaler()`` scales the loss for float16, whose narrow range flushes
  small gradients to zero; bfloat16 and float32 share float32's range and
  get a pass-through scaler.
- ``apply_gradients`` applies one update from the gradients accumulated
  through the scaler (one backward per micro-batch; ``optimizer_step`` is
  the one-batch case: backward, then ``apply_gradients``) and skips it,
  leaving the weights untouched, when the gradients are not finite: under float16 that is the
  loss scaler's overflow protocol (the scale is lowered and the next step
  retries); in any dtype a non-finite gradient must never reach the master
  weights, where it would stay forever.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch

DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class Precision:
    device: torch.device
    dtype: torch.dtype  # compute dtype under autocast, and the dtype snapshots are written in

    @classmethod
    def of(cls, device: str | torch.device, dtype: str) -> Precision:
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        return cls(torch.device(device), getattr(torch, dtype))

    @property
    def mixed(self) -> bool:
        return self.dtype != torch.float32

    def autocast(self) -> contextlib.AbstractContextManager:
        if not self.mixed:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        return torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)


@dataclass(frozen=True)
class StepOutcome:
    grad_norm: float  # before clipping, of the unscaled gradients; inf/nan when they overflowed
    applied: bool  # False: the update was skipped because a gradient was not finite
    loss_scale: float  # the float16 loss scale after this step; 1.0 when no scaling is used


def optimizer_step(
    loss: torch.Tensor,
    parameters: Iterable[torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    max_grad_norm: float,
) -> StepOutcome:
    """Backward ``loss``, clip the gradient norm (0: no clipping) and step, through ``scaler``.

    The (unscaled, clipped) gradients stay on the parameters until the next call.
    """
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    return apply_gradients(parameters, optimizer, scaler, max_grad_norm)


def apply_gradients(
    parameters: Iterable[torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    max_grad_norm: float,
) -> StepOutcome:
    """Clip the gradients already accumulated (through ``scaler``: each micro-batch's ``scaler.scale(loss)
    .backward()``) to ``max_grad_norm`` (0: no clipping) and step."""
    parameters = list(parameters)
    scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
    max_norm = max_grad_norm if max_grad_norm > 0 else float("inf")
    # clip_grad_norm_ in its two halves, so that a norm over sharded (FSDP2 DTensor) gradients is made whole
    # before it scales them.
    total = torch.nn.utils.get_total_norm([p.grad for p in parameters if p.grad is not None])
    if hasattr(total, "full_tensor"):
        total = total.full_tensor()
    torch.nn.utils.clip_grads_with_norm_(parameters, max_norm, total)
    norm = float(total)
    applied = math.isfinite(norm)
    if scaler.is_enabled():
        scaler.step(optimizer)  # skips the update itself when unscale_ found inf/nan
        scaler.update()
    elif applied:
        optimizer.step()
    return StepOutcome(norm, applied, scaler.get_scale() if scaler.is_enabled() else 1.0)
