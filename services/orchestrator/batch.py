"""Scored groups -> the trainer's sequences (pure).

``train_sequences(prompts, groups, advantages, zero_signal_groups)`` returns
``(sequences, zero_signal)``: one ``TrainSequence`` per candidate with a valid
(finite) advantage, in question then candidate order, and how many groups
carried no signal (no valid non-zero advantage).

A candidate whose reward is missing has a NaN advantage and never enters the
batch: it was not judged, and 0 would claim it was average. A group without
signal is where the two conventions differ:

- ``keep`` (TRL's GRPOTrainer, the default): its judged candidates go in with
  advantage 0. They add nothing to the policy-gradient term but count in the
  loss normaliser (bnpo / dapo divide by all tokens of the batch) and in the
  KL term when beta > 0, so the loss of a step does not depend on how many of
  its groups happened to be solved or failed by every candidate.
- ``drop`` (DAPO's dynamic sampling): the group is left out of the batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

from fedgrpo.v1 import policy_trainer_pb2 as tpb

from .advantages import group_has_signal


def train_sequences(
    prompts: Sequence[Sequence[int]],
    groups: Sequence[Sequence],
    advantages: Sequence[Sequence[float]],
    zero_signal_groups: Literal["keep", "drop"] = "keep",
) -> tuple[list[tpb.TrainSequence], int]:
    """``groups[q][i]`` is candidate i of question q (``token_ids``, ``logprobs``), ``advantages[q][i]`` its advantage.

    Returns the batch's sequences and the number of groups without signal.
    """
    if zero_signal_groups not in ("keep", "drop"):
        raise ValueError(f"zero_signal_groups: got {zero_signal_groups!r}, expected keep or drop")
    if not len(prompts) == len(groups) == len(advantages):
        raise ValueError(
            f"prompts, groups and advantages must have one entry per question, got "
            f"{len(prompts)}, {len(groups)} and {len(advantages)}"
        )
    sequences: list[tpb.TrainSequence] = []
    zero_signal = 0
    for q, (prompt, group, group_advantages) in enumerate(zip(prompts, groups, advantages)):
        if len(group) != len(group_advantages):
            raise ValueError(f"question {q}: {len(group)} candidates but {len(group_advantages)} advantages")
        if not group_has_signal(group_advantages):
            zero_signal += 1
            if zero_signal_groups == "drop":
                continue
        for sample, advantage in zip(group, group_advantages):
            if math.isfinite(advantage):
                sequences.append(
                    tpb.TrainSequence(
                        prompt_token_ids=prompt, completion_token_ids=sample.token_ids,
                        completion_logprobs=sample.logprobs, advantage=advantage,
                    )
                )
    return sequences, zero_signal
