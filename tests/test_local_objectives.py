"""A training client's own objectives (``--local-objectives``): loading, scoring, and their share of the weights."""

from __future__ import annotations

import math

import pytest

from fedgrpo.models.tiny_reward import build_tiny_reward_model
from fedgrpo.settings import ConfigError
from fedgrpo.v1 import federation_pb2 as fpb
from services.reward_client.evaluators import RewardModelEvaluator
from services.reward_client.local_training.objectives import OBJECTIVES, ObjectiveError, load_objectives
from services.reward_client.local_training.trainer import LocalTrainer

M = "tests.client_objectives"


def test_a_function_objective_is_named_by_its_function_and_scores_in_0_1_or_nan():
    one_line, echoes, high, word, broken = load_objectives(
        [f"{M}:one_line", f"{M}:echoes", f"{M}:out_of_range", f"{M}:not_a_number", f"{M}:broken"])
    assert [o.name for o in (one_line, echoes, high, word, broken)] == [
        "one_line", "echoes", "out_of_range", "not_a_number", "broken"]
    assert one_line.score("add1", "1 + 1?", ["2", "it is\n2"]) == [1.0, 0.0]
    assert echoes.score("add1", "1 + 1?", ["1", "3"]) == [1.0, 0.0]  # True / False are 1 / 0
    assert high.score("add1", "q", ["a"]) == [1.0]  # clamped
    assert math.isnan(word.score("add1", "q", ["a"])[0]) and math.isnan(broken.score("add1", "q", ["a"])[0])


@pytest.mark.parametrize(("specs", "message"), [
    (["reward_model"], "set --reward-model"),
    ([f"{M}:absent"], "has no 'absent'"),
    ([f"{M}:NOT_A_FUNCTION"], "is a int, not a function"),
    (["no_such_module_xyz:f"], "module 'no_such_module_xyz' does not import"),
    (["politeness"], "unknown objective 'politeness': expected 'reward_model', a function as module:function"),
])
def test_an_objective_that_cannot_be_used_says_what_to_fix(specs, message):
    with pytest.raises(ObjectiveError, match=message):
        load_objectives(specs)


def test_an_added_name_may_not_shadow_the_rounds_or_repeat(monkeypatch, tmp_path):
    (tmp_path / "org_objectives.py").write_text("def brevity(q, r):\n    return 1.0\n\ndef one_line(q, r):\n"
                                                "    return 0.0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ObjectiveError, match="'brevity' is already used"):
        load_objectives(["org_objectives:brevity"])
    with pytest.raises(ObjectiveError, match="'one_line' is already used"):
        load_objectives([f"{M}:one_line", "org_objectives:one_line"])


def test_the_reward_model_objective_is_the_clients_own_models_score_rescaled(tmp_path):
    model = RewardModelEvaluator(build_tiny_reward_model(tmp_path / "rm"))
    (objective,) = load_objectives(["reward_model"], model)
    replies = ["12", "a much longer reply of many words"]
    raw = model.score("add1", "What is 5 + 7?", replies)
    scaled = objective.score("add1", "What is 5 + 7?", replies)
    assert objective.name == "reward_model"
    assert scaled == pytest.approx([(r - model.reward_min) / (model.reward_max - model.reward_min) for r in raw])
    assert all(0 <= s <= 1 for s in scaled)


def test_added_objectives_start_at_their_weight_and_the_rounds_share_the_rest(model_cache, tmp_path):
    from fedgrpo.data.files import Row

    added = load_objectives([f"{M}:one_line", f"{M}:echoes"])
    trainer = LocalTrainer(model_cache / "tiny-policy", tmp_path, [Row("1 + 1?", "2", "add1")], lambda r, c: [],
                           added=added, added_weight=0.1)
    r = fpb.TrainingRound(run_id="r", objectives=list(OBJECTIVES), objective_weights=[0.6, 0.2, 0.2],
                          objective_learning_rate=1.0)
    weights = trainer._objective_weights(r).as_dict()
    assert weights == pytest.approx({"correctness": 0.48, "format": 0.16, "brevity": 0.16, "one_line": 0.1,
                                     "echoes": 0.1})
    with pytest.raises(ValueError, match="added_weight"):
        LocalTrainer(model_cache / "tiny-policy", tmp_path, [Row("q", "a", "add1")], lambda r, c: [],
                     added=added, added_weight=0.5)


def test_the_client_refuses_added_objectives_it_cannot_use_at_start():
    from fedgrpo.settings import load
    from services.reward_client.config import RewardClientSettings

    with pytest.raises(ConfigError, match="local_objectives are objectives of local training"):
        load(RewardClientSettings, ["--name", "org", "--domains", "add1", "--plaintext",
                                    "--local-objectives", f"{M}:one_line"])
    with pytest.raises(ConfigError, match="local_objective_weight: 2 added objectives x 0.5 leave nothing"):
        load(RewardClientSettings, ["--name", "org", "--domains", "add1", "--plaintext", "--orchestrator",
                                    "127.0.0.1:1", "--local-training", "--local-policy", "tiny-policy",
                                    "--local-objectives", f"{M}:one_line,{M}:echoes", "--local-objective-weight",
                                    "0.5"])
