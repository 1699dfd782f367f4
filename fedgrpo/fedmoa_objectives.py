"""The objectives of a FedMOA round: one definition for both ends of the wire.

Their names, in the order of their weights (``RunSpec.exchange.objective_weights``), are what
a round sends (``TrainingRound.objectives``); a locally training client scores each candidate
on them (``services/reward_client/local_training/objectives.py``) and refuses a round that
names others. ``PRIMARY`` is the objective whose improvement the weights adapt for.
"""

from __future__ import annotations

OBJECTIVES: tuple[str, ...] = ("correctness", "format", "brevity")
PRIMARY = 0  # correctness
