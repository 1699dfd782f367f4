"""How the server combines the clients' adapters each round (weights: pure Python; tensors: torch).

Contract
--------
Every client of a round starts from the same global adapter and returns its
whole locally trained adapter ``theta_c``; the next global adapter is
``sum_c p_c theta_c`` with ``sum_c p_c = 1`` (so it equals
``global + sum_c p_c (theta_c - global)``): ``aggregate``. LoRA's A and B
matrices are averaged apart, as FedPETuning does.

The weights ``p``:

- ``fedavg_weights(samples)`` (the ``fedavg_lora`` baseline): proportional to
  the rollouts each client trained on, capped at what the round asked of it
  (a client cannot outweigh the others by what it declares).
- ``task_accuracy_weights(coverage, accuracy, temperature)`` (FedMOA):
  ``p_c ~ coverage_c * exp(accuracy_c / temperature)``. ``coverage_c`` is
  the share of the server's validation questions whose task (domain) the
  client covers (``task_coverage``); ``accuracy_c`` is the accuracy of the
  client's adapter on those validation questions, measured by the server
  (never declared by the client). A lower temperature favours the most
  accurate clients more; a very high one leaves task coverage alone. When no
  client covers any validation task, coverage is ignored.

``clip_to_median(deltas, factor)`` bounds each client's update: a delta whose
L2 norm exceeds ``factor`` x the median norm of the *other* clients' deltas is
scaled down to it, so one client's outsized update cannot swamp the round.
Leaving the client out matters with few clients: with two, the median of all
norms is their mean, which an outsized update drags up with it (3x the mean
of 1 and 100 bounds nothing). A lone client has no one to be compared with
and is not clipped.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Collection, Mapping, Sequence

import torch


def _normalised(raw: Sequence[float], name: str) -> list[float]:
    if not raw:
        raise ValueError(f"{name}: need at least one client")
    total = math.fsum(raw)
    if not math.isfinite(total) or total <= 0:
        return [1.0 / len(raw)] * len(raw)
    return [x / total for x in raw]


def fedavg_weights(samples: Sequence[int], asked: int) -> list[float]:
    """FedAvg: ``p_c ~ min(samples_c, asked)``; uniform if no client trained on anything."""
    if asked <= 0:
        raise ValueError(f"asked: must be > 0, got {asked}")
    return _normalised([float(min(max(n, 0), asked)) for n in samples], "samples")


def task_coverage(client_domains: Collection[str], validation_domains: Sequence[str]) -> float:
    """Share of the validation questions (``validation_domains``: one entry per question) the client covers."""
    if not validation_domains:
        raise ValueError("validation_domains: the validation set is empty")
    covered = set(client_domains)
    return sum(1 for d in validation_domains if d in covered) / len(validation_domains)


def task_accuracy_weights(coverage: Sequence[float], accuracy: Sequence[float], temperature: float) -> list[float]:
    """FedMOA's weights ``p_c ~ coverage_c * exp(accuracy_c / temperature)`` (module docstring)."""
    if len(coverage) != len(accuracy):
        raise ValueError(f"accuracy: need one per client ({len(coverage)}), got {len(accuracy)}")
    if not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature: must be a finite number > 0, got {temperature}")
    for name, values in (("coverage", coverage), ("accuracy", accuracy)):
        for c, x in enumerate(values):
            if not math.isfinite(x) or not 0 <= x <= 1:
                raise ValueError(f"{name}[{c}]: must be in [0, 1], got {x}")
    top = max(accuracy) if accuracy else 0.0
    strength = [math.exp((a - top) / temperature) for a in accuracy]
    if not any(coverage):
        coverage = [1.0] * len(coverage)
    return _normalised([c * s for c, s in zip(coverage, strength)], "coverage")


def clip_to_median(deltas: Sequence[Mapping[str, torch.Tensor]], factor: float) -> list[dict[str, torch.Tensor]]:
    """Each delta scaled to an L2 norm of at most ``factor`` x the others' median norm (module docstring)."""
    if factor <= 0:
        raise ValueError(f"factor: must be > 0, got {factor}")
    norms = [math.sqrt(sum(float(t.double().pow(2).sum()) for t in d.values())) for d in deltas]
    clipped = []
    for c, (delta, norm) in enumerate(zip(deltas, norms)):
        others = norms[:c] + norms[c + 1:]
        bound = factor * statistics.median(others) if others else math.inf
        scale = bound / norm if norm > bound > 0 else 1.0
        clipped.append({name: t * scale for name, t in delta.items()})
    return clipped


def aggregate(
    global_adapter: Mapping[str, torch.Tensor], adapters: Sequence[Mapping[str, torch.Tensor]],
    weights: Sequence[float], clip_factor: float | None = None,
) -> dict[str, torch.Tensor]:
    """``global + sum_c p_c (theta_c - global)``, each delta clipped first when ``clip_factor`` is given.

    Every adapter must hold exactly the global adapter's tensors (``fedgrpo.adapter_transfer.check_adapter``
    checks that before a client's adapter is accepted).
    """
    if len(adapters) != len(weights) or not adapters:
        raise ValueError(f"weights: need one per adapter ({len(adapters)}), got {len(weights)}")
    deltas = [{name: a[name].float() - g.float() for name, g in global_adapter.items()} for a in adapters]
    if clip_factor is not None:
        deltas = clip_to_median(deltas, clip_factor)
    out = {}
    for name, g in global_adapter.items():
        step = sum(p * d[name] for p, d in zip(weights, deltas))
        out[name] = (g.float() + step).to(g.dtype)
    return out
