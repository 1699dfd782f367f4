"""Split task domains over simulated clients by a Dirichlet draw, as FedGRPO does.

``dirichlet_split(domains, clients, alpha, seed, min_share)`` draws, for each
domain, the shares of its labelled data held by each client from
Dirichlet(alpha, ..., alpha); a client holds a domain when its share is at
least ``min_share``, and the largest holder always holds it, so every domain
has an expert. Small alpha (the paper's 0.1) gives each domain one or two
holders; large alpha spreads domains over everyone. A client may hold no
domain at all: it is then an expert nowhere and can only judge with its own
model. Deterministic for a seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Split:
    holdings: list[list[str]]  # holdings[k]: the domains client k holds, in domain order
    shares: list[list[float]]  # shares[k][d]: client k's share of domain d's data


def dirichlet_split(
    domains: Sequence[str], clients: int, alpha: float = 0.1, seed: int = 0, min_share: float = 0.1
) -> Split:
    if clients < 1:
        raise ValueError(f"clients: got {clients}, expected >= 1")
    if not domains:
        raise ValueError("domains: at least one domain is needed")
    if not alpha > 0:
        raise ValueError(f"alpha: got {alpha}, expected > 0")
    if not 0 < min_share <= 1:
        raise ValueError(f"min_share: got {min_share}, expected in (0, 1]")
    rng = np.random.default_rng(seed)
    shares = rng.dirichlet([alpha] * clients, size=len(domains))  # [domains, clients]
    holdings: list[list[str]] = [[] for _ in range(clients)]
    for d, domain in enumerate(domains):
        top = int(np.argmax(shares[d]))
        for k in range(clients):
            if k == top or shares[d, k] >= min_share:
                holdings[k].append(domain)
    return Split(holdings, shares.T.round(6).tolist())
