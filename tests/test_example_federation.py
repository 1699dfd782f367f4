"""The example federations: examples/clinic (a user copies it) and examples/reasoning (`make run`'s).

Their files load, every mistake in such a file is named with its line, the data files of [[make]]
entries are made (and remade when stale), and both run end to end with the tiny policy: the clinic's
three organisations (one with its own checker module, one with only a reward model, which the probes
expose), and the main job's from files alone, held-out evaluation included."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from fedgrpo.data.files import normalise, read_rows
from fedgrpo.job.federation_file import (
    DEFAULT_FEDERATION,
    FederationFileError,
    Policy,
    line_of,
    load_federation,
    make_files,
)
from fedgrpo.job.federation_run import evaluation_rows, run_federation
from fedgrpo.job.main_job import JobSettings

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "clinic" / "federation.toml"


def test_the_example_file_loads_with_its_paths_from_its_folder():
    federation = load_federation(EXAMPLE)
    folder = EXAMPLE.parent
    assert federation.server.datasets == {"clinic": folder / "server" / "clinic.jsonl"}
    assert federation.server.auxiliary == folder / "server" / "auxiliary.jsonl"
    assert [c.name for c in federation.clients] == ["hospital-a", "clinic-b", "insurer-c"]
    assert federation.clients[1].options() == {"labels": str(folder / "clinic-b" / "labels.jsonl"),
                                               "checker": "checks:category_matches"}
    assert federation.clients[1].pythonpath == [folder / "clinic-b"]
    assert federation.clients[2].options() == {"reward_model": "tiny-reward-model"}
    assert federation.run["dataset"] == "clinic"


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda t: t + "\n[servre]\nx = 1\n", "line 54: servre: Extra inputs are not permitted"),
        (lambda t: t.replace('checker = "exact"\n', 'chekcer = "exact"\n', 1),
         "line 23: clients[0] (hospital-a): unknown option(s) ['chekcer']"),
        (lambda t: t.replace("steps = 12", "stepz = 12"), "line 40: run: unknown RunSpec field(s) ['stepz']"),
        (lambda t: t.replace("auxiliary_size = 8", "auxiliary_size = 0"),
         "line 17: server.auxiliary_size: Input should be greater than or equal to 1"),
        (lambda t: t + '\n[[make]]\ndomains = ["add2", "astrology"]\nsize = 3\nout = "x.jsonl"\n',
         "line 55: make[0].domains: Value error, unknown built-in domain(s) ['astrology']"),
        (lambda t: t + '\n[[make]]\ndomains = ["add2"]\nsize = 3\nout = "x.jsonl"\nexclude = ["y.jsonl"]\n',
         "line 58: make[0].exclude: .*y.jsonl: no such file, and no earlier [[make]] entry makes it"),
        (lambda t: t.replace("hospital-a/codes.csv", "hospital-a/missing.csv"),
         "clients[0].labels: "),
        (lambda t: t.replace('dataset = "clinic"', 'dataset = "oncology"'),
         "run.dataset 'oncology' is not in server.datasets ['clinic']"),
        (lambda t: t.replace("[policy]", "[policy"), "not TOML"),
        (lambda t: t.replace("steps = 12", "steps = 0"), "run.steps: Input should be greater than or equal to 1"),
        (lambda t: t.replace("steps = 12", 'steps = "many"'), "run.steps: Input should be a valid integer"),
        (lambda t: t.replace('backend = "vllm"', 'backend = "onnx"'), "policy.backend"),
    ],
)
def test_every_mistake_in_a_federation_file_is_named(tmp_path, edit, message):
    copy = tmp_path / "clinic"
    shutil.copytree(EXAMPLE.parent, copy)
    (copy / "federation.toml").write_text(edit(EXAMPLE.read_text()))
    pattern = message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(").replace(")", r"\)")
    with pytest.raises(FederationFileError, match=pattern.replace(r".\*", ".*")) as err:
        load_federation(copy / "federation.toml")
    assert str(copy / "federation.toml") in str(err.value)


@pytest.mark.integration
def test_the_example_federation_runs_end_to_end_with_the_tiny_policy(tmp_path, model_cache):
    federation = load_federation(EXAMPLE)
    federation.policy = Policy(model="tiny-policy", backend="transformers")
    federation.run.update(steps=2, questions_per_step=2, candidates_per_question=4, max_tokens=6)
    federation.evaluation.max_tokens = 6
    summary = run_federation(federation, tmp_path / "runs", tmp_path / "job", model_cache, tensorboard=True)
    assert summary["steps_completed"] == 2
    for rewards in summary["rewards_by_client"]:
        assert sum(rewards.values()) == 2 * 4 * 2  # questions x candidates x experts, every step
    for when in ("accuracy_before", "accuracy_after"):
        assert summary[when]["questions"] == 22 and 0.0 <= summary[when]["overall"] <= 1.0
    # the clinic measures its training questions (held_out is not set), and says so
    assert summary["held_out"]["overlaps"] == {"held_out_training": 22, "held_out_auxiliary": 0}
    competence = summary["competence"]
    assert competence["clinic-b"]["icd"] == 1.0  # holds every auxiliary item, and its checker is honest
    assert competence["insurer-c"]["icd"] < 1.0  # a reward model that knows nothing
    assert (tmp_path / "runs" / summary["run_id"] / "metrics.jsonl").exists()
    # --report-to tensorboard: the watched steps as events in the run's folder
    events = EventAccumulator(str(tmp_path / "runs" / summary["run_id"] / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/reward_mean")] == [1, 2]


def test_fedgrpo_run_names_a_bad_config_file():
    from .test_configuration import start

    proc = start("run", "--config", "/nonexistent/federation.toml")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "fedgrpo run: --config: /nonexistent/federation.toml: no such file" in proc.stderr


def test_line_of_follows_tables_arrays_of_tables_and_keys():
    text = '[run]\nsteps = 1\n\n[[clients]]\nname = "a"\n\n[[clients]]\nname = "b"\nchecker = "x"\n[server]\n' \
           'datasets = { a = "x" }\n'
    assert line_of(text, ["run", "steps"]) == 2
    assert line_of(text, ["clients", 1]) == 7
    assert line_of(text, ["clients", 1, "checker"]) == 9
    assert line_of(text, ["clients", 0, "checker"]) == 4  # not in clients[0]: the table's own line
    assert line_of(text, ["server", "datasets", "a"]) == 11  # inside an inline table: its line
    assert line_of(text, ["clients", 5, "name"]) is None and line_of(text, ["nowhere"]) is None


def reasoning_copy(tmp_path: Path) -> Path:
    """The main job's federation file in a folder of its own (its [[make]] files are made there)."""
    (tmp_path / "reasoning").mkdir()
    copy = tmp_path / "reasoning" / "federation.toml"
    copy.write_text(DEFAULT_FEDERATION.read_text())
    return copy


def test_the_main_jobs_federation_is_made_of_files_that_keep_each_party_to_its_own(tmp_path):
    federation = load_federation(reasoning_copy(tmp_path))
    made = make_files(federation, say=lambda _: None)
    assert [p.relative_to(federation.folder).as_posix() for p in made] == [
        "data/server/questions.jsonl", "data/server/auxiliary.jsonl", "data/client-0/labels.jsonl",
        "data/client-1/labels.jsonl", "data/client-2/labels.jsonl", "data/evaluation.jsonl"]
    server = read_rows(federation.server.datasets["reasoning"])
    assert all(r.answer is None for r in server)  # the server's questions carry no answers
    questions = {(r.domain, normalise(r.question)) for r in server}
    auxiliary = {(r.domain, normalise(r.question)) for r in read_rows(federation.server.auxiliary, labelled=True)}
    holds = {}
    for client in federation.clients:
        rows = read_rows(client.options()["labels"], labelled=True)
        holds[client.name] = {(r.domain, normalise(r.question)) for r in rows}
    assert {n: sorted({d for d, _ in h}) for n, h in holds.items()} == {
        "client-0": ["add2", "letter_counting"], "client-1": ["chain3", "letter_counting"],
        "client-2": ["add2", "chain3"]}
    # the clients can judge every training question and every probe of their domains, and nothing else
    for name, held in holds.items():
        domains = {d for d, _ in held}
        assert {q for q in questions if q[0] in domains} == held
        assert {a for a in auxiliary if a[0] in domains} <= held
    # held out: the evaluation shares no question with the server's questions or its auxiliary set
    rows, held_out = evaluation_rows(federation)
    assert held_out["questions_per_domain"] == {"add2": 100, "letter_counting": 100, "chain3": 100}
    assert held_out["overlaps"] == {"held_out_training": 0, "held_out_auxiliary": 0}
    assert len({normalise(r.question) for r in rows}) == 300
    assert make_files(federation, say=lambda _: None) == []  # made once


def test_make_files_remakes_a_stale_file_and_what_excludes_it(tmp_path):
    copy = reasoning_copy(tmp_path)
    make_files(load_federation(copy), say=lambda _: None)
    # a changed entry (the server's questions grow) remakes its file, and the held-out set that excludes it
    copy.write_text(copy.read_text().replace("size = 1000\nunlabelled = true", "size = 1200\nunlabelled = true"))
    federation = load_federation(copy)
    remade = make_files(federation, say=lambda _: None)
    assert [p.name for p in remade] == ["questions.jsonl", "evaluation.jsonl"]
    assert len(read_rows(federation.server.datasets["reasoning"])) == 3600
    assert evaluation_rows(federation)[1]["overlaps"] == {"held_out_training": 0, "held_out_auxiliary": 0}


def test_an_evaluation_that_is_not_held_out_is_refused_when_the_file_says_held_out(tmp_path):
    copy = reasoning_copy(tmp_path)
    copy.write_text(copy.read_text().replace('exclude = ["data/server/questions.jsonl"]\n', "").replace(
        "seed = 1000003\n", ""))
    federation = load_federation(copy)
    make_files(federation, say=lambda _: None)
    distinct = len({normalise(r.question) for r in read_rows(federation.evaluation.dataset)})
    with pytest.raises(FederationFileError, match=rf"held_out = true, but {distinct} of its questions are in "
                       r"server.datasets and 99 in server.auxiliary; make it with --exclude"):
        evaluation_rows(federation)


@pytest.mark.parametrize("argv, message", [
    (["--spec", "stepz=3"], "--spec stepz: not a RunSpec field"),
    (["--spec", "steps=0"], "--spec steps: Input should be greater than or equal to 1"),
    (["--spec", "learning_rate=fast"], "--spec learning_rate: Input should be a valid number"),
])
def test_run_overrides_are_checked_like_the_file(argv, message):
    from fedgrpo.settings import load

    with pytest.raises(SystemExit, match=message):
        load(JobSettings, argv).apply(load_federation(DEFAULT_FEDERATION))


def test_run_overrides_change_only_what_they_name():
    from fedgrpo.settings import load

    job = load(JobSettings, ["--device", "cuda", "--dtype", "bfloat16", "--spec", "steps=40",
                             "--spec", "tasks=add2,chain3", "--eval-questions", "7"])
    federation = job.apply(load_federation(DEFAULT_FEDERATION))
    assert (federation.policy.device, federation.policy.dtype, federation.policy.model) == (
        "cuda", "bfloat16", "smollm2-135m-instruct")
    assert federation.run["steps"] == 40 and federation.run["tasks"] == ["add2", "chain3"]
    assert federation.run["learning_rate"] == 2e-5 and federation.evaluation.per_domain == 7


def test_a_choice_given_by_its_readable_name_reaches_the_wire_as_its_enum():
    """`fedgrpo run --spec loss_type=dr_grpo`: the [run] table keeps the name; the request carries the enum."""
    from fedgrpo import spec_enums
    from fedgrpo.settings import load
    from fedgrpo.v1 import common_pb2
    from fedgrpo.v1 import orchestrator_pb2 as pb

    job = load(JobSettings, ["--spec", "loss_type=dr_grpo", "--spec", "reward_reading=pooled"])
    federation = job.apply(load_federation(DEFAULT_FEDERATION))
    assert (federation.run["loss_type"], federation.run["reward_reading"]) == ("dr_grpo", "pooled")
    sent = spec_enums.spec_message(federation.run)  # what Client.create_run sends for this table
    assert (sent.loss_type, sent.reward_reading) == (common_pb2.LOSS_TYPE_DR_GRPO, pb.REWARD_READING_POOLED)
    with pytest.raises(SystemExit, match=r"--spec loss_type: Input should be 'grpo', 'bnpo', 'dr_grpo' or 'dapo'"):
        load(JobSettings, ["--spec", "loss_type=ppo"]).apply(load_federation(DEFAULT_FEDERATION))


@pytest.mark.integration
def test_the_main_jobs_federation_runs_from_its_files_with_the_tiny_policy(tmp_path, model_cache):
    federation = load_federation(reasoning_copy(tmp_path))
    federation.policy = Policy(model="tiny-policy", backend="transformers")
    federation.run.update(steps=2, questions_per_step=3, candidates_per_question=4, max_tokens=6)
    federation.evaluation.per_domain, federation.evaluation.max_tokens = 5, 6
    summary = run_federation(federation, tmp_path / "runs", tmp_path / "job", model_cache)
    assert summary["steps_completed"] == 2 and summary["spec"]["dataset"] == "reasoning"
    assert summary["held_out"]["overlaps"] == {"held_out_training": 0, "held_out_auxiliary": 0}
    assert summary["accuracy_after"]["questions"] == 15
    assert set(summary["accuracy_before"]["per_domain"]) == {"add2", "letter_counting", "chain3"}
    # every candidate got its two experts' rewards, from labels files alone
    for rewards in summary["rewards_by_client"]:
        assert sum(rewards.values()) == 3 * 4 * 2
    # the probes found each organisation competent on its own domains only
    competence = summary["competence"]
    assert competence["client-0"]["add2"] == 1.0 and competence["client-0"]["chain3"] < 1.0
    assert summary["routing_precision"] == 1.0
    run_dir = tmp_path / "runs" / summary["run_id"]
    assert (run_dir / "summary.json").exists() and (run_dir / "reward_curve.png").exists()
