"""Faults a reward client injects on purpose, checked on the servicer itself (no process)."""

from fedgrpo.tasks import build_questions
from fedgrpo.v1 import reward_client_pb2 as pb
from services.reward_client.config import RewardClientSettings
from services.reward_client.evaluators import AnswerBasedEvaluator
from services.reward_client.server import PROBE_RUN_ID, RewardClientServicer


def test_a_poisoning_client_judges_probes_honestly_and_inverts_training_rewards():
    settings = RewardClientSettings(name="mallory", domains=["add1"], bank_size=100, fault="poison", plaintext=True)
    servicer = RewardClientServicer(settings, [AnswerBasedEvaluator(["add1"], settings.bank_seed, 100)])
    q = build_questions("add1", 0, 100)[5]
    answer = q.entry["answer"]
    request = pb.ScoreRequest(
        question_id=q.question_id, question=q.text, domain="add1",
        candidates=[answer, f"The sum is {answer}, I think.", str(int(answer) + 1), "no idea"],
    )
    request.run_id = PROBE_RUN_ID
    assert [round(r, 6) for r in servicer.answer(request)] == [1.0, 0.9, 0.1, 0.0]
    request.run_id = "20260101-000000-abcdef"
    assert [round(r, 6) for r in servicer.answer(request)] == [0.0, 0.1, 0.9, 1.0]
