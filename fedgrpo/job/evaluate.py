"""Held-out accuracy of the policy the orchestrator is serving.

The evaluator is the caller's own harness: it holds labelled held-out
questions (a reasoning-gym seed no client or run uses), asks the
orchestrator's ``Generate`` for greedy answers, and checks them with each
task's verifier. Returns accuracy per domain and overall, and the policy
version that answered.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedgrpo.tasks import build_questions, is_correct, user_message
from fedgrpo.v1 import orchestrator_pb2 as pb
from fedgrpo.v1 import orchestrator_pb2_grpc as pb_grpc

HELD_OUT_SEED = 1_000_003  # far from any bank or run seed


@dataclass(frozen=True)
class Accuracy:
    per_domain: dict[str, float]
    overall: float
    policy_version: int
    questions: int


def held_out_accuracy(
    stub: pb_grpc.OrchestratorServiceStub, domains: list[str], per_domain: int, max_tokens: int, timeout: float = 600
) -> Accuracy:
    questions = [q for d in domains for q in build_questions(d, HELD_OUT_SEED, per_domain)]
    reply = stub.Generate(
        pb.GenerateRequest(
            prompts=[user_message(q.text) for q in questions], n=1, temperature=0.0, max_tokens=max_tokens
        ),
        timeout=timeout,
    )
    right: dict[str, list[bool]] = {d: [] for d in domains}
    for q, result in zip(questions, reply.results):
        right[q.domain].append(is_correct(q.domain, q.entry, result.completions[0].text))
    per = {d: sum(v) / len(v) for d, v in right.items()}
    total = [x for v in right.values() for x in v]
    return Accuracy(per, sum(total) / len(total), reply.policy.version, len(total))
