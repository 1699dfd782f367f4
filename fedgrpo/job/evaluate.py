"""Held-out accuracy of the policy the orchestrator is serving.

The evaluator is the caller's own harness: it holds labelled held-out
questions (``held_out.disjoint_held_out``: none in the training pool or the
auxiliary set), asks the orchestrator's ``Generate`` for greedy answers, and
checks them with each task's verifier. Returns accuracy per domain and
overall, each question's correctness (in question order, for paired
comparisons between methods) and the policy version that answered.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fedgrpo.tasks import LabelledQuestion, is_correct, user_message
from fedgrpo.v1 import orchestrator_pb2 as pb
from fedgrpo.v1 import orchestrator_pb2_grpc as pb_grpc

from .held_out import HELD_OUT_SEED  # noqa: F401  (re-exported: where held-out questions come from)


@dataclass(frozen=True)
class Accuracy:
    per_domain: dict[str, float]
    overall: float
    policy_version: int
    questions: int
    correct: dict[str, list[int]]  # domain -> 1/0 per held-out question of that domain, in question order


def held_out_accuracy(
    stub: pb_grpc.OrchestratorServiceStub, questions: Sequence[LabelledQuestion], max_tokens: int,
    timeout: float = 600, batch: int = 100,
) -> Accuracy:
    right: dict[str, list[int]] = {}
    for q in questions:
        right.setdefault(q.domain, [])
    versions = set()
    for start in range(0, len(questions), batch):  # Generate takes at most MAX_GENERATE_PROMPTS prompts a call
        chunk = questions[start:start + batch]
        reply = stub.Generate(
            pb.GenerateRequest(
                prompts=[user_message(q.text) for q in chunk], n=1, temperature=0.0, max_tokens=max_tokens
            ),
            timeout=timeout,
        )
        versions.add(reply.policy.version)
        for q, result in zip(chunk, reply.results, strict=True):
            right[q.domain].append(int(is_correct(q.domain, q.entry, result.completions[0].text)))
    if len(versions) != 1:
        raise RuntimeError(f"held-out evaluation: answered by policy versions {sorted(versions)}, expected one")
    per = {d: sum(v) / len(v) for d, v in right.items()}
    total = [x for v in right.values() for x in v]
    return Accuracy(per, sum(total) / len(total), versions.pop(), len(total), right)
