"""The example federation a user copies (examples/clinic): its file loads, every mistake in such a file
is named, and it runs end to end with the tiny policy: three organisations, one with its own checker
module, one with only a reward model, which the probes expose."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from fedgrpo.job.federation_file import FederationFileError, Policy, load_federation, run_federation

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
        (lambda t: t + "\n[servre]\nx = 1\n", "servre: Extra inputs are not permitted"),
        (lambda t: t.replace('checker = "exact"\n', 'chekcer = "exact"\n', 1),
         "clients[0] (hospital-a): unknown option(s) ['chekcer']"),
        (lambda t: t.replace("steps = 12", "stepz = 12"), "run: unknown RunSpec field(s) ['stepz']"),
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
    with pytest.raises(FederationFileError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")
                       .replace(")", r"\)")) as err:
        load_federation(copy / "federation.toml")
    assert str(copy / "federation.toml") in str(err.value)


@pytest.mark.integration
def test_the_example_federation_runs_end_to_end_with_the_tiny_policy(tmp_path, model_cache):
    federation = load_federation(EXAMPLE)
    federation.policy = Policy(model="tiny-policy", backend="transformers")
    federation.run.update(steps=2, questions_per_step=2, candidates_per_question=4, max_tokens=6)
    federation.evaluation.max_tokens = 6
    summary = run_federation(federation, tmp_path / "runs", tmp_path / "job", model_cache)
    assert summary["steps"] == 2
    for rewards in summary["rewards_by_client"]:
        assert sum(rewards.values()) == 2 * 4 * 2  # questions x candidates x experts, every step
    assert 0.0 <= summary["accuracy_before"] <= 1.0 and 0.0 <= summary["accuracy_after"] <= 1.0
    competence = summary["competence"]
    assert competence["clinic-b"]["icd"] == 1.0  # holds every auxiliary item, and its checker is honest
    assert competence["insurer-c"]["icd"] < 1.0  # a reward model that knows nothing
    assert (tmp_path / "runs" / summary["run_id"] / "metrics.jsonl").exists()


def test_fedgrpo_run_names_a_bad_config_file():
    from .test_configuration import start

    proc = start("run", "--config", "/nonexistent/federation.toml")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "fedgrpo run: --config: /nonexistent/federation.toml: no such file" in proc.stderr
