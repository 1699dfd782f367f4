"""A reward client with its organisation's own reward model (a Hugging Face sequence-classification
folder, built locally) beside its labels: which evaluator scores what, in the order the client chose,
and folders that are no reward model refused at start."""

from __future__ import annotations

import json
import math

import pytest

from fedgrpo.job.launcher import Federation
from fedgrpo.models import build_tiny_model
from fedgrpo.models.tiny_reward import build_tiny_reward_model
from fedgrpo.services.reward_client.evaluators import RewardModelEvaluator
from fedgrpo.v1 import common_pb2
from fedgrpo.v1 import reward_client_pb2 as pb

from .conftest import START_TIMEOUT, reward_stub
from .test_configuration import start

LABELLED = "Which ICD-10 code is asthma?"
UNLABELLED = "Which ICD-10 code is gout?"


@pytest.fixture(scope="module")
def reward_model(tmp_path_factory):
    return build_tiny_reward_model(tmp_path_factory.mktemp("models") / "tiny-reward-model")


def test_the_reward_model_scores_pairs_in_range_deterministically(reward_model):
    evaluator = RewardModelEvaluator(reward_model)
    candidates = ["J45", "The answer is J45.", "no idea", ""]
    rewards = evaluator.score("icd", LABELLED, candidates)
    assert len(rewards) == 4 and all(0.0 < r < 1.0 for r in rewards)
    assert len(set(rewards)) > 1  # the pair, not the question alone, decides
    assert evaluator.score("icd", LABELLED, candidates) == rewards
    assert evaluator.score("icd", LABELLED, candidates[:1]) == pytest.approx(rewards[:1], abs=1e-6)  # padding-free


def test_a_folder_that_is_no_reward_model_is_refused(tmp_path):
    causal = build_tiny_model(tmp_path / "tiny-llama")
    with pytest.raises(ValueError, match="has no sequence-classification head"):
        RewardModelEvaluator(causal)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not a sequence-classification model folder that loads"):
        RewardModelEvaluator(tmp_path / "empty")
    proc = start("reward-client", "--plaintext", "--reward-model", str(causal))
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "reward_model (--reward-model / FEDGRPO_REWARD_CLIENT_REWARD_MODEL)" in proc.stderr
    assert "has no sequence-classification head" in proc.stderr
    proc = start("reward-client", "--plaintext", "--reward-model", str(tmp_path / "absent"))
    assert "absent: no such folder" in proc.stderr


def client(fed, tmp_path, reward_model, order: str):
    labels = tmp_path / "labels.jsonl"
    labels.write_text(json.dumps({"question": LABELLED, "answer": "J45", "domain": "icd"}) + "\n")
    service = fed.start(f"org-{order.replace(',', '-')}", "reward-client", [
        "--name", "org-a", "--labels", str(labels), "--reward-model", str(reward_model),
        "--evaluator-order", order,
    ])
    fed.wait_healthy(service, START_TIMEOUT)
    return reward_stub(service.address)


def score(stub, question, candidates):
    return list(stub.Score(pb.ScoreRequest(question_id="q", question=question, domain="icd",
                                           candidates=candidates)).rewards)


@pytest.mark.integration
def test_labels_first_then_the_reward_model_or_the_other_way_round(tmp_path, reward_model):
    expected = RewardModelEvaluator(reward_model)
    with Federation(tmp_path / "logs") as fed:
        labels_first = client(fed, tmp_path, reward_model, "labels,reward_model")
        model_first = client(fed, tmp_path, reward_model, "reward_model,labels")
        described = labels_first.Describe(pb.DescribeRequest())
        assert list(described.evaluator_kinds) == [common_pb2.EVALUATOR_KIND_ANSWER_BASED,
                                                   common_pb2.EVALUATOR_KIND_MODEL_BASED]
        # A labelled question: the labels decide (exact), unless the reward model comes first.
        assert score(labels_first, LABELLED, ["J45", "K21"]) == [1.0, 0.0]
        by_model = score(model_first, LABELLED, ["J45", "K21"])
        assert by_model == pytest.approx(expected.score("icd", LABELLED, ["J45", "K21"]), abs=1e-6)
        assert not set(by_model) <= {0.0, 1.0}
        # A question without a label: the reward model judges it either way.
        for stub in (labels_first, model_first):
            rewards = score(stub, UNLABELLED, ["M10", "no idea"])
            assert rewards == pytest.approx(expected.score("icd", UNLABELLED, ["M10", "no idea"]), abs=1e-6)
            assert all(0.0 < r < 1.0 and not math.isnan(r) for r in rewards)
