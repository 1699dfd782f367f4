"""The orchestrator's own question datasets (--dataset NAME=PATH): read at start without their answers,
sampled by runs that name them, prompted with the dataset's instruction and system prompt; and a real run
on an organisation's own domain, scored by clients whose labels and checker are files of their own."""

from __future__ import annotations

import os

import pytest

from fedgrpo.services.orchestrator.datasets import load_dataset
from fedgrpo.services.orchestrator.questions import QuestionBank
from fedgrpo.tasks import question_id, user_message
from fedgrpo.v1 import orchestrator_pb2 as pb

from .conftest import federation, write_jsonl
from .test_configuration import start
from .test_join import run_to_end, steps_of

CODES = {
    "asthma": "J45", "GERD": "K21", "migraine": "G43", "influenza": "J11", "gout": "M10", "anaemia": "D64",
}


def clinic_questions(path, with_answers=False):
    rows = [{"question": f"Which ICD-10 code is {name}?", "domain": "icd",
             **({"answer": code} if with_answers else {})} for name, code in CODES.items()]
    rows.append({"question": "Is a fever of 39C urgent?", "system": "You are a triage nurse.",  # no domain
                 **({"answer": "yes"} if with_answers else {})})
    rows.append({"question": "Which  ICD-10 code is asthma? ", "domain": "icd",  # a repeat, once normalised
                 **({"answer": "J45"} if with_answers else {})})
    return write_jsonl(path, rows)


def test_a_dataset_is_read_by_domain_without_answers_and_with_its_prompt_format(tmp_path):
    dataset = load_dataset("clinic", clinic_questions(tmp_path / "q.jsonl", with_answers=True),
                           instruction="Answer with the code only.", system="You are a clinical coder.")
    assert dataset.domains == ["clinic", "icd"]  # a row without a domain belongs to the dataset's name
    assert len(dataset.by_domain["icd"]) == 6 and dataset.repeated == 1
    asthma = dataset.by_domain["icd"][0]
    assert (asthma.question_id, asthma.text) == (question_id("icd", "Which ICD-10 code is asthma?"),
                                                 "Which ICD-10 code is asthma?")
    assert not hasattr(asthma, "entry")  # the server keeps no answer
    assert dataset.prompt(asthma) == ("Which ICD-10 code is asthma? Answer with the code only.",
                                      "You are a clinical coder.")
    fever = dataset.by_domain["clinic"][0]
    assert dataset.prompt(fever) == ("Is a fever of 39C urgent? Answer with the code only.",
                                     "You are a triage nurse.")  # the row's own system prompt wins


def test_the_bank_samples_a_datasets_domains_and_keeps_the_built_in_path(tmp_path):
    dataset = load_dataset("clinic", clinic_questions(tmp_path / "q.jsonl"))
    bank = QuestionBank(0, 50, datasets={"clinic": dataset})
    drawn = bank.sample(["icd"], step=3, count=20, seed=1, dataset="clinic")
    assert {q.domain for q in drawn} == {"icd"}
    assert {q.text for q in drawn} <= {q.text for q in dataset.by_domain["icd"]}
    assert drawn == bank.sample(["icd"], step=3, count=20, seed=1, dataset="clinic")  # (seed, step) decide
    assert bank.prompt(drawn[0], "clinic") == (drawn[0].text, None)  # no instruction given: the question alone
    built_in = bank.sample(["add1"], step=3, count=4, seed=1)
    assert bank.prompt(built_in[0]) == (user_message(built_in[0].text), None)
    with pytest.raises(ValueError, match="dataset 'gone' is not registered with this orchestrator"):
        bank.sample(["icd"], step=1, count=1, seed=0, dataset="gone")
    reserved = QuestionBank(0, 50, frozenset(q.question_id for q in dataset.by_domain["icd"]), {"clinic": dataset})
    with pytest.raises(ValueError, match="every icd question of dataset 'clinic' is reserved"):
        reserved.sample(["icd"], step=1, count=1, seed=0, dataset="clinic")


@pytest.mark.parametrize(
    "args, words",
    [
        (["--dataset", "clinic=/nonexistent/q.jsonl"],
         ["dataset (--dataset / FEDGRPO_ORCHESTRATOR_DATASET)", "clinic", "/nonexistent/q.jsonl: no such file"]),
        (["--dataset", "clinic"], ["dataset (--dataset", "'clinic': expected NAME=VALUE"]),
        (["--dataset", "clinic="], ["dataset", "has no path: write NAME=PATH"]),
        (["--dataset", "bad name=q.jsonl"], ["dataset name 'bad name'"]),
        (["--dataset", "clinic=q.jsonl", "--dataset-instruction", "other=Be brief."],
         ["dataset_instruction names ['other']", "registered: ['clinic']"]),
    ],
)
def test_a_bad_dataset_refuses_the_start(args, words):
    proc = start("orchestrator", "--plaintext", "--model", "tiny-llama", "--reward-clients", "127.0.0.1:1", *args)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    for word in words:
        assert word in proc.stderr, proc.stderr


CHECKER = '''
def code_matches(candidate, label):
    return label.lower() in candidate.lower()
'''


@pytest.mark.integration
def test_a_run_trains_on_an_organisations_own_domain(tmp_path, model_cache, monkeypatch):
    """The server holds the questions, two organisations hold the answers and a checker of their own;
    a run naming the dataset is scored by both at every step, on domain `icd` only."""
    (tmp_path / "server").mkdir()
    questions = clinic_questions(tmp_path / "server" / "clinic.jsonl")
    org = tmp_path / "org"
    org.mkdir()
    labels = clinic_questions(org / "labels.jsonl", with_answers=True)
    (org / "org_checks.py").write_text(CHECKER)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(org), os.environ.get("PYTHONPATH", "")) if p))
    own = ["--labels", str(labels), "--checker", "org_checks:code_matches"]
    with federation(
        tmp_path, model_cache, clients=[("", own), ("", own)],
        orchestrator_args=["--no-confidence-graph", "--dataset", f"clinic={questions}",
                           "--dataset-instruction", "clinic=Answer with the ICD-10 code."],
    ) as (stub, _, services):
        run = stub.CreateRun(pb.CreateRunRequest(spec=pb.RunSpec(
            dataset="clinic", tasks=["icd"], steps=2, questions_per_step=2, candidates_per_question=4,
            experts_per_question=2, max_tokens=8,
        )))
        assert (run.spec.dataset, list(run.spec.tasks)) == ("clinic", ["icd"])
        run = run_to_end(stub, run.run_id)
        log = services["orchestrator"].log_path.read_text()
    assert run.state == pb.RUN_STATE_SUCCEEDED, run.error
    assert [s["rewards_by_client"] for s in steps_of(run)] == [{"client-0": 8, "client-1": 8}] * 2
    assert "dataset clinic: 7 questions over clinic,icd" in log and "1 repeated questions dropped" in log


def test_probes_of_text_answers_take_wrong_ones_from_the_domain_and_forms_a_checker_reads():
    import random

    from fedgrpo.data.checkers import load_checker
    from fedgrpo.services.orchestrator.probes import probe_candidates
    from fedgrpo.tasks import LabelledQuestion

    item = LabelledQuestion("id", "icd", "Which ICD-10 code is asthma?", {"answer": "J45"})
    exact = load_checker("exact")
    rng = random.Random(3)
    wrong = []
    for _ in range(50):
        candidates, truth = probe_candidates(item, rng, 8, distractors=list(CODES.values()))
        for candidate, right in zip(candidates, truth):
            judged = exact(candidate, "J45", question=item.text, domain="icd", metadata={})
            assert (judged == 1.0) == right, candidate  # an honest exact checker agrees with every probe
            wrong += [candidate] if not right else []
    assert any("K21" in c for c in wrong) and not any("J45" in c for c in wrong)
    assert not any(c.rstrip(".\n* ").endswith(("J451", "J452", "J459")) for c in wrong)  # codes, not J45+digit


def test_the_auxiliary_set_from_a_file_spreads_over_its_domains(tmp_path):
    from fedgrpo.services.orchestrator.auxiliary import auxiliary_items_from_file

    path = write_jsonl(tmp_path / "aux.jsonl", [
        *[{"question": f"Which ICD-10 code is {n}?", "answer": c, "domain": "icd"} for n, c in CODES.items()],
        {"question": "Is a fever of 39C urgent?", "answer": "yes"},
        {"question": "Is a cough urgent?", "answer": "no"},
    ])
    items = auxiliary_items_from_file(path, 4)
    assert [(i.domain, i.entry["answer"]) for i in items] == [("icd", "J45"), ("icd", "K21"), ("aux", "yes"),
                                                              ("aux", "no")]
    assert items[0].question_id == question_id("icd", "Which ICD-10 code is asthma?")


@pytest.mark.integration
def test_the_confidence_graph_probes_clients_on_the_servers_own_labelled_file(tmp_path, model_cache):
    """An auxiliary file of the server's own (codes): the client holding the true codes judges every probe
    right; one whose labels are shifted by one judges many wrong."""
    aux = write_jsonl(tmp_path / "aux.jsonl", [
        {"question": f"Which ICD-10 code is {n}?", "answer": c, "domain": "icd"} for n, c in CODES.items()])
    names, codes = list(CODES), list(CODES.values())
    honest = write_jsonl(tmp_path / "honest.jsonl", [
        {"question": f"Which ICD-10 code is {n}?", "answer": c, "domain": "icd"} for n, c in CODES.items()])
    confused = write_jsonl(tmp_path / "confused.jsonl", [
        {"question": f"Which ICD-10 code is {n}?", "answer": codes[(i + 1) % len(codes)], "domain": "icd"}
        for i, n in enumerate(names)])
    with federation(
        tmp_path, model_cache,
        clients=[("", ["--labels", str(honest)]), ("", ["--labels", str(confused)])],
        orchestrator_args=["--auxiliary", str(aux), "--auxiliary-size", "6"],
    ) as (stub, _, services):
        view = stub.GetConfidenceGraph(pb.GetConfidenceGraphRequest())
        log = services["orchestrator"].log_path.read_text()
    accuracy = {(c.client, c.domain): c.accuracy for c in view.competences}
    assert accuracy[("client-0", "icd")] == 1.0
    assert accuracy[("client-1", "icd")] < 1.0
    assert f"confidence graph: 6 auxiliary items over icd from {aux}" in log
