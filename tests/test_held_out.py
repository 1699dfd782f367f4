"""Held-out questions are held out: none in the training pool or the auxiliary set, by normalised text."""

import pytest

from fedgrpo.job.evaluate import HELD_OUT_SEED
from fedgrpo.job.experiment import ExperimentSettings
from fedgrpo.job.held_out import disjoint_held_out, federation_sets, normalise, overlaps
from fedgrpo.job.main_job import JobSettings
from fedgrpo.tasks import Question, build_questions
from services.orchestrator.auxiliary import auxiliary_items
from services.orchestrator.questions import QuestionBank


def q(domain, text):
    return Question(f"{domain}:{text}", domain, text)


def test_overlaps_count_shared_normalised_texts():
    held = [q("add2", "Calculate 3 + 4."), q("add2", "Calculate 5 + 6."), q("chain3", "1 + 2 =")]
    training = [q("add1", "calculate  3 + 4. "), q("add2", "Calculate 9 + 9."), q("add2", "Calculate 9 + 9.")]
    auxiliary = [q("add2", "Calculate 9 + 9."), q("chain3", "1 + 2 =")]
    # the same question in another domain, or with other case and spacing, is the same question
    assert overlaps(held, training, auxiliary) == {
        "held_out_training": 1, "held_out_auxiliary": 1, "training_auxiliary": 1}
    assert normalise(" Calculate\n3 +  4. ") == "calculate 3 + 4."


def the_orchestrators_sets(domains):
    """Training pool and auxiliary set built here as server.py builds them (bank 0 x 1000, 100 items)."""
    auxiliary = auxiliary_items(domains, 100, 0, 1000)
    bank = QuestionBank(0, 1000, frozenset(a.question_id for a in auxiliary))
    return [x for d in domains for x in bank.questions(d)], auxiliary


@pytest.mark.parametrize("domains, per_domain", [
    (ExperimentSettings().domains, ExperimentSettings().eval_questions),
    (ExperimentSettings(scale="large").domains, ExperimentSettings(scale="large").eval_questions),
    (JobSettings().task_list(), JobSettings().eval_questions),
])
def test_default_held_out_sets_share_nothing_with_training_or_probing(domains, per_domain):
    held = disjoint_held_out(domains, per_domain)
    training, auxiliary = the_orchestrators_sets(domains)
    assert overlaps(held.questions, training, auxiliary) == {
        "held_out_training": 0, "held_out_auxiliary": 0, "training_auxiliary": 0}
    assert held.overlaps == overlaps(held.questions, training, auxiliary)
    assert per_domain >= 100 and held.per_domain == {d: per_domain for d in domains}
    assert held.total == per_domain * len(domains) == len({normalise(x.text) for x in held.questions})
    # each domain's question space is several times what the bank and the evaluation use of it
    for d in domains:
        drawn = {x.text for x in build_questions(d, 12345, 10_000)}
        assert len(drawn) > 3 * (1000 + per_domain), d


def test_the_old_held_out_rule_overlapped_the_training_pool():
    """What the fault was: a plain draw with another seed repeats the bank's texts in small domains."""
    domains = ["add1", "sub1", "mul1", "chain3", "letter_counting"]  # the old default
    old = [x for d in domains for x in build_questions(d, HELD_OUT_SEED, 30)]
    training, auxiliary = federation_sets(domains, 0, 1000, 100)
    found = overlaps(old, training, auxiliary)
    assert found["held_out_training"] > 50 and found["held_out_auxiliary"] > 0


def test_a_domain_too_small_for_a_held_out_set_is_refused():
    with pytest.raises(ValueError, match="add1 has only 0 questions outside the training bank"):
        disjoint_held_out(["add2", "add1"], 100)


def test_held_out_questions_are_the_same_in_every_process_and_a_prefix_when_fewer_are_asked():
    a = disjoint_held_out(["chain3", "add2"], 120).questions
    b = disjoint_held_out(["chain3", "add2"], 100).questions
    assert [x.question_id for x in a] == [x.question_id for x in disjoint_held_out(["chain3", "add2"], 120).questions]
    assert [x.question_id for x in b if x.domain == "chain3"] == [
        x.question_id for x in a if x.domain == "chain3"][:100]
