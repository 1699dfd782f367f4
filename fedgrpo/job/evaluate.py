"""Accuracy of the policy the orchestrator is serving, on a labelled file.

The evaluator is the caller's own harness: ``labelled_accuracy`` puts the
rows of a labelled file (e.g. held-out questions none of which the server
trains or probes on) to the orchestrator's ``Generate`` for greedy answers,
with the file's prompt format, and checks each answer against its label with
a checker (``fedgrpo.data.checkers``). Returns accuracy per domain and
overall, each question's correctness (in file order, for paired comparisons
between methods), the policy version that answered, and how many answers the
checker could not judge (left out of the accuracy).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from fedgrpo.data.checkers import Checker
from fedgrpo.data.files import Row
from fedgrpo.tasks import CORRECT_THRESHOLD, PromptFormat, question_id
from fedgrpo.v1 import orchestrator_pb2 as pb
from fedgrpo.v1 import orchestrator_pb2_grpc as pb_grpc


@dataclass(frozen=True)
class Accuracy:
    per_domain: dict[str, float]
    overall: float
    policy_version: int
    questions: int
    correct: dict[str, list[int]]  # domain -> 1/0 per held-out question of that domain, in question order


def labelled_accuracy(
    stub: pb_grpc.OrchestratorServiceStub, rows: Sequence[Row], checker: Checker, prompt: PromptFormat,
    max_tokens: int, timeout: float = 600, batch: int = 100,
) -> tuple[Accuracy, int]:
    """(accuracy, answers the checker could not judge) of the served policy on labelled rows of a file.

    Greedy answers through ``Generate`` (the row's system prompt, else the format's), each checked
    against its row's label; a reward of at least
    ``CORRECT_THRESHOLD`` is right, NaN ("cannot judge") is counted apart. Domains in file order
    (a row without one is "(none)")."""
    right: dict[str, list[int]] = {}
    versions, cannot_judge = set(), 0
    answers: dict[int, str] = {}
    by_system: dict[str, list[int]] = {}  # one Generate call takes one system prompt
    for i, row in enumerate(rows):
        by_system.setdefault(row.system or prompt.system or "", []).append(i)
    for system, indices in by_system.items():
        for start in range(0, len(indices), batch):
            chunk = indices[start:start + batch]
            reply = stub.Generate(pb.GenerateRequest(
                prompts=[prompt.user_text(rows[i].question) for i in chunk], n=1, temperature=0.0,
                max_tokens=max_tokens, system=system,
            ), timeout=timeout)
            versions.add(reply.policy.version)
            answers.update((i, result.completions[0].text) for i, result in zip(chunk, reply.results, strict=True))
    for i, row in enumerate(rows):
        domain = row.domain or ""
        reward = checker(answers[i], row.answer or "", question=row.question, domain=domain,
                         metadata=row.metadata, question_id=question_id(domain, row.question))
        if math.isnan(reward):
            cannot_judge += 1
            continue
        right.setdefault(domain or "(none)", []).append(int(reward >= CORRECT_THRESHOLD))
    if len(versions) > 1:
        raise RuntimeError(f"evaluation: answered by policy versions {sorted(versions)}, expected one")
    total = [x for v in right.values() for x in v]
    per = {d: sum(v) / len(v) for d, v in right.items()}
    overall = sum(total) / len(total) if total else math.nan
    return Accuracy(per, overall, versions.pop() if versions else 0, len(total), right), cannot_judge
