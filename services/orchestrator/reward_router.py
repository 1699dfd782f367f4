"""MoR's reward router: per-question weights over the clients, fitted on the probes (pure math).

Contract
--------
The router is a softmax gate over K clients conditioned on a question's
embedding: ``weights(x) = softmax(W z(x) + b)`` over the clients that
scored the question (the others get weight 0). The fused reward of a
candidate is the weighted mean of the clients' rewards for it (missing ones
left out, weights renormalised), exactly ``advantages.consensus_rewards``
with these weights. ``z(x)`` centres the embedding on the mean of the
auxiliary items' embeddings and scales it to unit length: language-model
embeddings share a large common direction (questions of different domains
can have cosine 0.99), and centring removes it so that the gate sees what
tells domains apart.

``fit_router(clients, features, errors)`` fits ``W`` and ``b`` on the probes of
the auxiliary set: item i has embedding ``features[i]``; ``errors[i, k]`` is
client k's mean squared error on item i's probe (its reward for each probe
candidate against 1 for a right candidate, 0 for a wrong one; the
confidence graph records 1, the worst, for garbage or "cannot judge", as it
records accuracy 0; NaN: not probed, or the probe failed in transport). Every client is probed with its own
candidates (so that a probe cannot be recognised by comparing notes), so the
fused reward of one candidate is not observed; the fit minimises the mixture
error ``sum_k weight_k(x_i) * errors[i, k]``, averaged over the items, which
bounds the fused reward's squared error from above (Jensen), plus
``l2 * |W|^2`` (so a gate leans on the embedding only where the probes
support it). Full-batch Adam from ``W = 0, b = 0`` (uniform weights: the
``mean`` fusion) for ``steps`` steps: deterministic for the same input. A
client whose rewards are noise, or a constant, has a high error and its
weight falls towards 0; a client exact on one domain dominates the questions
near that domain's items.

Wrong shapes, non-finite features or an empty probe set raise ``ValueError``
naming the argument.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["RouterFit", "fit_router", "gate_weights", "probe_error"]


@dataclass(frozen=True)
class RouterFit:
    clients: tuple[str, ...]
    W: np.ndarray  # [K, d]
    b: np.ndarray  # [K]
    centre: np.ndarray  # [d]: the mean embedding of the items it was fitted on
    loss: float  # the fitted mixture error (without the l2 term)
    uniform_loss: float  # the same error with uniform weights (the mean fusion), for comparison
    items: int  # auxiliary items with at least one usable probe

    def weights(self, features: np.ndarray, available: Sequence[Sequence[str]] | None = None) -> list[dict[str, float]]:
        """For each row of ``features`` [m, d]: client -> weight, over ``available[j]`` (default: every client)."""
        features = np.atleast_2d(np.asarray(features, dtype=np.float64))
        if features.ndim != 2 or features.shape[1] != self.W.shape[1]:
            raise ValueError(
                f"features must have {self.W.shape[1]} columns (the fitted embedding), got {features.shape}"
            )
        features = _unit_rows(features - self.centre, "features")
        logits = features @ self.W.T + self.b
        out = []
        for j, row in enumerate(logits):
            names = self.clients if available is None else [n for n in available[j] if n in self.clients]
            mask = np.array([n in names for n in self.clients])
            weights = gate_weights(row, mask)
            out.append({n: float(w) for n, w, m in zip(self.clients, weights, mask) if m})
        return out


def gate_weights(logits: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """softmax of ``logits`` over the entries where ``mask`` is true; 0 elsewhere (all 0 if none)."""
    logits = np.asarray(logits, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool)
    out = np.zeros_like(logits)
    if not mask.any():
        return out
    shifted = np.where(mask, logits - logits[mask].max(), -np.inf)
    exp = np.exp(shifted)
    return exp / exp.sum()


def probe_error(judged: Sequence[float], truth: Sequence[bool]) -> float:
    """Mean squared error of a probe's rewards against its candidates' correctness (1 right, 0 wrong)."""
    if len(judged) != len(truth) or not len(judged):
        raise ValueError(f"judged and truth must be equally long and non-empty, got {len(judged)} and {len(truth)}")
    return float(np.mean((np.asarray(judged, dtype=np.float64) - np.asarray(truth, dtype=np.float64)) ** 2))


def fit_router(
    clients: Sequence[str], features: np.ndarray, errors: np.ndarray, *,
    l2: float = 1e-3, steps: int = 400, learning_rate: float = 0.1,
) -> RouterFit:
    """Fit the gate on the probes (see module docstring)."""
    import torch

    features = np.asarray(features, dtype=np.float64)
    _unit_rows(features, "features")  # shape and finiteness
    errors = np.asarray(errors, dtype=np.float64)
    n, d = features.shape
    k = len(clients)
    if errors.shape != (n, k):
        raise ValueError(f"errors must have shape [items={n}, clients={k}], got {errors.shape}")
    if not (l2 >= 0 and steps >= 0 and learning_rate > 0):
        raise ValueError(f"need l2 >= 0, steps >= 0, learning_rate > 0; got {l2}, {steps}, {learning_rate}")
    valid = np.isfinite(errors)
    used = valid.any(axis=1)
    if not used.any():
        raise ValueError("errors holds no finite value: probe the clients before fitting the router")
    centre = features[used].mean(axis=0)
    x = torch.tensor(_unit_rows(features[used] - centre, "features"))
    e = torch.tensor(np.where(valid, errors, 0.0)[used])
    mask = torch.tensor(valid[used])
    W = torch.zeros(k, d, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(k, dtype=torch.float64, requires_grad=True)

    def mixture_error(W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        logits = (x @ W.T + b).masked_fill(~mask, -torch.inf)
        return (torch.softmax(logits, dim=1) * e).sum(1).mean()

    with torch.no_grad():
        uniform = float(mixture_error(W, b))
    optimiser = torch.optim.Adam([W, b], lr=learning_rate)
    for _ in range(steps):
        optimiser.zero_grad()
        loss = mixture_error(W, b) + l2 * (W ** 2).sum()
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        fitted = float(mixture_error(W, b))
    return RouterFit(tuple(clients), W.detach().numpy().copy(), b.detach().numpy().copy(), centre, fitted, uniform,
                     int(used.sum()))


def _unit_rows(features: np.ndarray, name: str) -> np.ndarray:
    if features.ndim != 2:
        raise ValueError(f"{name} must be a matrix [items, d], got shape {features.shape}")
    if not np.all(np.isfinite(features)):
        raise ValueError(f"{name} must be finite")
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return features / np.where(norms > 0, norms, 1.0)
