"""MoR end to end with real services: two organisations train their own reward models from their own
private labels on their own machines (`fedgrpo reward-model preferences` + `train`), a third holds
labels and a checker, and a short run with the `mor` preset fuses every client's reward with the router
fitted on the probes. And the spec side: the preset's defaults, fusion options, bad combinations."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from fedgrpo import spec_enums
from fedgrpo.data.checkers import load_checker
from fedgrpo.data.files import read_rows
from fedgrpo.data.make import make_rows, write_rows
from fedgrpo.job.federation_file import Policy, load_federation
from fedgrpo.job.federation_run import run_federation
from fedgrpo.reward_models.preferences import make_preferences
from fedgrpo.reward_models.training import TrainingSettings, train_reward_model
from fedgrpo.services.orchestrator.spec import SpecError, resolve_spec
from fedgrpo.tasks import PromptFormat
from fedgrpo.v1 import orchestrator_pb2 as pb

INSTRUCTION = "Answer with just the number."


def spec(**fields) -> pb.RunSpec:
    return spec_enums.spec_message({"tasks": ["add1"], **fields})


def resolve(msg: pb.RunSpec, graph: bool = True):
    return resolve_spec(msg, ["add1", "sub1"], "m", 3, 512, graph_available=graph)


def test_the_mor_preset_fills_only_what_the_spec_leaves_unset():
    mor = resolve(spec(preset="mor"))
    assert (mor.expert_selection, mor.reward_fusion, mor.beta) == ("all", "router", 0.04)
    mine = resolve(spec(preset="mor", beta=0.1, reward_fusion="mean"))
    assert (mine.expert_selection, mine.reward_fusion, mine.beta) == ("all", "mean", 0.1)
    plain = resolve(spec())
    assert (plain.preset, plain.reward_fusion, plain.beta) == ("fedgrpo", "competence", 0.0)


@pytest.mark.parametrize("fields, graph, field, message", [
    ({"preset": "mor"}, False, "reward_fusion", "router needs the confidence graph"),
    ({"reward_fusion": "router", "reward_reading": "pooled"}, True, "reward_fusion", "consensus reading"),
    ({"reward_fusion": 9}, True, "reward_fusion", "got 9, not a RewardFusion value"),
    ({"preset": 9}, True, "preset", "got 9, not a Preset value"),
])
def test_bad_fusion_settings_name_the_field(fields, graph, field, message):
    with pytest.raises(SpecError) as err:
        resolve(spec(**fields), graph=graph)
    assert err.value.field == field and message in str(err.value)


def organisation_reward_model(home: Path, domain: str, policy: Path, backbone: Path) -> Path:
    """An organisation's own machine: its labels, preference rows sampled from them, its reward model."""
    labels = home / "labels.jsonl"
    write_rows(make_rows(domain, 24, seed=7), labels)
    rows = read_rows(labels, labelled=True)
    prefs, _ = make_preferences(rows, policy, load_checker("reasoning-gym"), PromptFormat(instruction=INSTRUCTION),
                                samples=4, max_tokens=6)
    assert prefs, "no preference pairs"
    out = home / "reward-model"
    train_reward_model(prefs, backbone, out, TrainingSettings(epochs=2, learning_rate=1e-3, batch_size=8))
    return out


FEDERATION = """
[policy]
model = "tiny-policy"
backend = "transformers"

[server]
datasets = {{ tiny = "server/questions.jsonl" }}
dataset_instruction = {{ tiny = "{instruction}" }}
auxiliary = "server/auxiliary.jsonl"
auxiliary_size = 12

[[clients]]
name = "org-a"
reward_model = "{a}"

[[clients]]
name = "org-b"
reward_model = "{b}"

[[clients]]
name = "org-c"
labels = "org-c/labels.jsonl"
checker = "reasoning-gym"

[run]
dataset = "tiny"
preset = "mor"
steps = 2
questions_per_step = 2
candidates_per_question = 4
max_tokens = 6

[[make]]
domains = ["add1", "sub1"]
size = 30
unlabelled = true
out = "server/questions.jsonl"

[[make]]
domains = ["add1", "sub1"]
size = 6
out = "server/auxiliary.jsonl"

[[make]]
domains = ["add1"]
size = 30
out = "org-c/labels.jsonl"
"""


@pytest.mark.integration
def test_clients_train_their_own_reward_models_and_a_mor_run_fuses_them_with_the_router(tmp_path, model_cache):
    from fedgrpo.models import build_tiny_model, resolve_model

    policy = resolve_model("tiny-policy", model_cache)
    backbone = build_tiny_model(model_cache / "tiny-llama")
    a = organisation_reward_model(tmp_path / "org-a", "add1", policy, backbone)
    b = organisation_reward_model(tmp_path / "org-b", "sub1", policy, backbone)
    folder = tmp_path / "federation"
    folder.mkdir()
    (folder / "federation.toml").write_text(FEDERATION.format(instruction=INSTRUCTION, a=a, b=b))
    federation = load_federation(folder / "federation.toml")
    federation.policy = Policy(model="tiny-policy", backend="transformers")
    summary = run_federation(federation, tmp_path / "runs", tmp_path / "job", model_cache)

    assert summary["steps_completed"] == 2
    spec = summary["spec"]
    assert (spec["preset"], spec["reward_fusion"], spec["expert_selection"], spec["beta"]) == (
        "PRESET_MOR", "REWARD_FUSION_ROUTER", "EXPERT_SELECTION_ALL", 0.04)  # summary.json: the run's JSON form
    run_dir = tmp_path / "runs" / summary["run_id"]
    steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for step in steps:
        weights = step["router_weight_by_client"]
        assert set(weights) == {"org-a", "org-b", "org-c"}  # every client scored every question
        assert math.fsum(weights.values()) == pytest.approx(1.0)  # each question's weights sum to 1
        assert sum(step["rewards_by_client"].values()) > 0
    # The router, fitted on the probes: org-c judges add1 exactly (its labels) and cannot judge sub1.
    router = summary["router_weights"]
    assert router["org-c"]["add1"] > 0.9 > router["org-c"]["sub1"]
    assert json.loads((run_dir / "router_weights.json").read_text())["org-c"]["add1"] == pytest.approx(
        router["org-c"]["add1"], abs=1e-3)
    assert (run_dir / "router_weights.png").stat().st_size > 0
