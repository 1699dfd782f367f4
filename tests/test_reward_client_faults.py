"""Faults a reward client injects on purpose, checked on the servicer itself (no process)."""

from fedgrpo.services.reward_client.config import RewardClientSettings
from fedgrpo.services.reward_client.evaluators import AnswerBasedEvaluator
from fedgrpo.services.reward_client.server import RewardClientServicer
from fedgrpo.tasks import build_questions
from fedgrpo.v1 import reward_client_pb2 as pb


def servicer_with(fault: str, after: int = 0) -> RewardClientServicer:
    settings = RewardClientSettings(
        name="mallory", domains=["add1"], bank_size=100, fault=fault, fault_after_calls=after, plaintext=True
    )
    return RewardClientServicer(settings, [AnswerBasedEvaluator.from_bank(["add1"], settings.bank_seed, 100)])


def test_a_poisoning_client_answers_honestly_for_its_first_calls_then_inverts_every_reward():
    servicer = servicer_with("poison", after=2)
    q = build_questions("add1", 0, 100)[5]
    answer = q.entry["answer"]
    request = pb.ScoreRequest(
        question_id=q.question_id, question=q.text, domain="add1", run_id="20260101-000000-abcdef",
        candidates=[answer, f"The sum is {answer}, I think.", str(int(answer) + 1), "no idea"],
    )
    honest = [[round(r, 6) for r in servicer.answer(request)] for _ in range(2)]
    assert honest == [[1.0, 0.9, 0.1, 0.0]] * 2
    assert [round(r, 6) for r in servicer.answer(request)] == [0.0, 0.1, 0.9, 1.0]


def test_the_probe_pattern_cheater_answers_the_old_probe_and_garbage_otherwise():
    servicer = servicer_with("probe_pattern")
    q = build_questions("add1", 0, 100)[5]
    answer = q.entry["answer"]
    wrong = str(int(answer) + 2)
    old_probe = [answer, f"The answer is {wrong}.", wrong, f"The answer is {answer}."]
    request = pb.ScoreRequest(question_id=q.question_id, question=q.text, domain="add1", candidates=old_probe)
    assert servicer.answer(request) == [1.0, 0.0, 0.0, 1.0]  # recognised by its shape
    request.run_id = "probe"
    request.candidates[:] = [wrong, answer]
    assert servicer.answer(request) == [1.0, 0.0, 0.0, 1.0]  # recognised by its run id (the count is wrong)
    request.run_id = "20260101-000000-abcdef"
    garbage = servicer.answer(request)
    assert len(garbage) == 2 and garbage != [0.1, 1.0]  # not the honest judgement
    assert all(0.0 <= r <= 1.0 for r in garbage)
