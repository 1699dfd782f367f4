"""Held-out questions are held out: the experiment's evaluation file shares no question with the
server's training questions or its auxiliary set, by normalised text, and each client's file holds
exactly the training questions and probes of its domains."""

from pathlib import Path

import pytest

from fedgrpo.data.files import normalise, read_rows
from fedgrpo.job.experiment import AUXILIARY_SIZE, ExperimentSettings
from fedgrpo.job.experiment_files import HELD_OUT_SEED, QUESTIONS_PER_DOMAIN, make_experiment_files
from fedgrpo.job.split import dirichlet_split
from fedgrpo.tasks import build_questions


def texts(path: Path, domains=None) -> set[tuple[str, str]]:
    return {(r.domain, normalise(r.question)) for r in read_rows(path) if domains is None or r.domain in domains}


@pytest.mark.parametrize("scale", ["default", "large"])
def test_the_experiments_held_out_set_shares_nothing_with_training_or_probing(tmp_path, scale):
    s = ExperimentSettings(scale=scale)
    split = dirichlet_split(s.domains, s.clients, s.alpha, s.split_seed)
    files = make_experiment_files(s.domains, split.holdings, tmp_path, s.eval_questions, AUXILIARY_SIZE)
    questions, auxiliary = texts(files.questions), texts(files.auxiliary)
    evaluation = {(r.domain, normalise(r.question)) for r in files.evaluation}
    assert not {t for _, t in evaluation} & {t for _, t in questions | auxiliary}
    assert files.held_out["overlaps"] == {"held_out_training": 0, "held_out_auxiliary": 0, "training_auxiliary": 0}
    assert files.held_out["questions_per_domain"] == {d: s.eval_questions for d in s.domains}
    assert len(evaluation) == files.held_out["questions"] == s.eval_questions * len(s.domains)
    assert files.auxiliary_size == len(read_rows(files.auxiliary)) >= AUXILIARY_SIZE
    assert all(r.answer is None for r in read_rows(files.questions))  # the server's copy has no answers
    # each client holds the training questions and probes of its domains, the central one all of them
    for held, labels in zip(split.holdings, files.labels):
        if not held:
            assert labels is None
            continue
        assert texts(labels) == {q for q in questions if q[0] in held} and texts(labels) >= {
            a for a in auxiliary if a[0] in held}
    assert texts(files.central) == questions
    # each domain's question space is several times what the training pool and evaluation use of it
    for d in s.domains:
        drawn = {x.text for x in build_questions(d, 12345, 10_000)}
        assert len(drawn) > 3 * (QUESTIONS_PER_DOMAIN + s.eval_questions), d


def test_a_domain_too_small_for_a_held_out_set_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"add1: only \d+ new questions among the 2000 drawn with seed 1000003"):
        make_experiment_files(["add2", "add1"], [["add2"], ["add1"]], tmp_path, 100)


def test_the_files_are_the_same_every_time(tmp_path):
    a = make_experiment_files(["chain3", "add2"], [["chain3"], ["add2"]], tmp_path / "a", 30)
    b = make_experiment_files(["chain3", "add2"], [["chain3"], ["add2"]], tmp_path / "b", 30)
    for name in ("server/questions.jsonl", "server/auxiliary.jsonl", "client-0.jsonl", "evaluation.jsonl"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert a.held_out["seed"] == HELD_OUT_SEED
    assert [(r.question, r.answer) for r in a.evaluation] == [(r.question, r.answer) for r in b.evaluation]
