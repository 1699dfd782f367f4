"""A client's own reward model: preference rows (read, built from labels), Bradley-Terry training with
TRL's RewardTrainer on a hand-made case, the folder served by the reward client's evaluator, and every
bad input named (file, row, field) with nothing half-written left behind."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from fedgrpo.data.files import DataFileError
from fedgrpo.models import build_tiny_model
from fedgrpo.reward_models.preferences import Preference, pair_candidates, read_preferences, with_final_answer
from fedgrpo.reward_models.training import (
    RewardModelError,
    TrainingSettings,
    held_out_split,
    load_backbone,
    preference_accuracy,
    train_reward_model,
)
from fedgrpo.services.reward_client.evaluators import RewardModelEvaluator
from fedgrpo.tasks.prompts import extract_answer

from .conftest import write_jsonl

# -- pairing, by hand -------------------------------------------------------------------------------

def test_right_candidates_are_chosen_over_wrong_ones_and_repeats_count_once():
    scored = [("41", 0.0), ("42", 1.0), ("41 ", 0.0), ("40", 0.0), ("?", math.nan), ("The answer is 42", 0.9)]
    assert pair_candidates("42", scored, max_pairs=5) == [("42", "41"), ("The answer is 42", "40")]
    assert pair_candidates("42", scored, max_pairs=1) == [("42", "41")]


def test_without_a_right_candidate_the_label_is_chosen():
    assert pair_candidates("42", [("41", 0.0), ("7", 0.0)], max_pairs=2) == [("42", "41"), ("42", "7")]
    assert pair_candidates("42", [("42", 1.0), ("42", 1.0)], max_pairs=2) == []  # nothing wrong: no pair
    assert pair_candidates("42", [("42", 0.0)], max_pairs=2) == []  # the checker rejects the label itself
    assert pair_candidates("42", [("?", math.nan)], max_pairs=2) == []
    with pytest.raises(ValueError, match="max_pairs"):
        pair_candidates("42", [], max_pairs=0)


def test_a_wrong_candidates_corrected_twin_is_chosen_over_it_before_the_bare_label():
    wrong = [("The sum is 41.", 0.0), ("I think 7", 0.0), ("no idea", 0.0)]
    twins = {"The sum is 41.": with_final_answer("The sum is 41.", "42"),
             "I think 7": with_final_answer("I think 7", "42")}
    assert twins == {"The sum is 41.": "The sum is 42.", "I think 7": "I think 42"}
    assert pair_candidates("42", wrong, 3, twins) == [
        ("The sum is 42.", "The sum is 41."), ("I think 42", "I think 7"), ("42", "no idea")]
    # A right sample beats any twin; a label the checker rejects leaves only checked twins.
    assert pair_candidates("42", [("42", 1.0), *wrong], 1, twins) == [("42", "The sum is 41.")]
    assert pair_candidates("42", [("42", 0.0), ("3 + 4 = 8", 0.0)], 2, {"3 + 4 = 8": "3 + 4 = 7"}) == [
        ("3 + 4 = 7", "3 + 4 = 8")]
    assert with_final_answer("-3 then 12.5 apples", "-4") == "-3 then -4 apples"
    assert with_final_answer("no number", "42") is None and with_final_answer("5", "forty") is None


def test_held_out_split_keeps_a_question_on_one_side_whatever_the_order():
    prefs = [Preference(f"q{i % 20}", "a", f"b{i}") for i in range(100)]
    train, held = held_out_split(prefs, 0.3)
    assert {p.question for p in train}.isdisjoint({p.question for p in held}) and held and train
    train2, held2 = held_out_split(list(reversed(prefs)), 0.3)
    assert {p.question for p in held2} == {p.question for p in held}
    with pytest.raises(RewardModelError, match="held-out-fraction"):
        held_out_split(prefs, 1.0)


# -- reading, and bad files -------------------------------------------------------------------------

def test_preference_files_in_each_format_read_the_same(tmp_path):
    import datasets

    rows = [{"question": "2+2?", "chosen": "4", "rejected": "5", "domain": "add"},
            {"question": "3+3?", "chosen": "6", "rejected": "9", "domain": "add"}]
    jsonl = write_jsonl(tmp_path / "p.jsonl", rows)
    datasets.Dataset.from_list(rows).to_csv(str(tmp_path / "p.csv"), index=False)
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "p.parquet"))
    datasets.Dataset.from_list([{"prompt": r["question"], "chosen": r["chosen"], "rejected": r["rejected"]}
                                for r in rows]).save_to_disk(str(tmp_path / "folder"))
    expected = [("2+2?", "4", "5"), ("3+3?", "6", "9")]
    for path in (jsonl, tmp_path / "p.csv", tmp_path / "p.parquet", tmp_path / "folder"):
        assert [(p.question, p.chosen, p.rejected) for p in read_preferences(path)] == expected, path
    assert read_preferences(jsonl)[0].domain == "add"


@pytest.mark.parametrize("rows, match", [
    ([], "no rows"),
    ([{"question": "q", "chosen": "a"}], "no rejected column 'rejected'"),
    ([{"question": "q", "chosen": "a", "rejected": "b"}, {"question": "q2", "chosen": "", "rejected": "b"}],
     r"row 2 \(line 2\): column 'chosen' is empty"),
    ([{"question": "q", "chosen": "The  answer", "rejected": "The answer"}],
     r"row 1 \(line 1\): columns 'chosen' and 'rejected' hold the same answer"),
])
def test_a_bad_preference_file_names_the_row_and_field(tmp_path, rows, match):
    path = tmp_path / "prefs.jsonl"
    if rows:
        write_jsonl(path, rows)
    else:
        path.write_text("")
    with pytest.raises(DataFileError, match=match):
        read_preferences(path)


# -- training ---------------------------------------------------------------------------------------

def hand_made_preferences(n: int = 60) -> list[Preference]:
    """A rule any backbone can learn: the chosen answer is a number, the rejected one a refusal."""
    return [Preference(f"What is {i} plus {i % 7}?", str(i + i % 7), "I cannot say.") for i in range(n)]


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture(scope="module")
def trained(backbone, tmp_path_factory):
    out = tmp_path_factory.mktemp("rm") / "reward-model"
    settings = TrainingSettings(epochs=4, learning_rate=3e-3, batch_size=8, held_out_fraction=0.25)
    report = train_reward_model(hand_made_preferences(), backbone, out, settings, backbone_name="tiny-llama")
    return out, report


def test_bradley_terry_training_puts_the_chosen_answer_above_the_rejected(trained):
    out, report = trained
    assert report.train_pairs + report.held_out_pairs == 60 and report.held_out_pairs > 0
    assert report.held_out_accuracy_after == 1.0  # questions it never saw
    assert math.isfinite(report.final_loss) and report.final_loss < math.log(2)  # below chance (0.693)
    model, tokenizer = load_backbone(out)
    assert preference_accuracy(model, tokenizer, hand_made_preferences(), 256) == 1.0
    metadata = json.loads((out / "fedgrpo-reward-model.json").read_text())
    assert metadata["token_type_ids"] is False and metadata["report"]["train_pairs"] == report.train_pairs


def test_the_learned_direction_follows_the_preferences(backbone, tmp_path):
    """The same rows with chosen and rejected swapped: now the refusal must score higher."""
    swapped = [Preference(p.question, p.rejected, p.chosen) for p in hand_made_preferences()]
    settings = TrainingSettings(epochs=4, learning_rate=3e-3, batch_size=8, held_out_fraction=0.25)
    report = train_reward_model(swapped, backbone, tmp_path / "rm", settings)
    assert report.held_out_accuracy_after == 1.0
    rewards = RewardModelEvaluator(tmp_path / "rm").score("add", "What is 100 plus 2?", ["102", "I cannot say."])
    assert rewards[1] > rewards[0]


def test_the_reward_client_serves_the_trained_folder_in_range(trained):
    out, _ = trained
    evaluator = RewardModelEvaluator(out)
    rewards = evaluator.score("add", "What is 100 plus 2?", ["102", "I cannot say."])
    assert all(0.0 <= r <= 1.0 for r in rewards) and rewards[0] > rewards[1]


def test_a_diverging_run_writes_no_folder_and_keeps_the_old_one(trained, backbone, tmp_path):
    out, _ = trained
    before = sorted(p.name for p in out.iterdir())
    settings = TrainingSettings(epochs=1, learning_rate=1e38, batch_size=8, held_out_fraction=0.25)
    with pytest.raises(RewardModelError, match="diverged.*lower --learning-rate"):
        train_reward_model(hand_made_preferences(), backbone, out, settings)
    assert sorted(p.name for p in out.iterdir()) == before  # the published model is untouched
    fresh = tmp_path / "never"
    with pytest.raises(RewardModelError, match="diverged"):
        train_reward_model(hand_made_preferences(), backbone, fresh, settings)
    assert not fresh.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".never")]


def test_a_base_without_a_usable_tokenizer_is_refused(backbone, tmp_path):
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(backbone, bare, ignore=shutil.ignore_patterns("tokenizer*", "special_tokens_map.json", "vocab*"))
    with pytest.raises(RewardModelError, match="no usable tokenizer"):
        train_reward_model(hand_made_preferences(), bare, tmp_path / "out", TrainingSettings(epochs=1))
    assert not (tmp_path / "out").exists()


# -- the command ------------------------------------------------------------------------------------

def run_command(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fedgrpo.cli", "reward-model", *args],
                          capture_output=True, text=True, timeout=600)


def test_the_command_builds_preferences_from_labels_and_trains_a_minilm_reward_model(backbone, tmp_path):
    labels = write_jsonl(tmp_path / "labels.jsonl", [
        {"question": f"What is {i} + {i}?", "answer": str(2 * i), "domain": "add"} for i in range(24)
    ])
    prefs = tmp_path / "prefs.jsonl"
    done = run_command("preferences", "--data", str(labels), "--model", str(backbone), "--out", str(prefs),
                       "--checker", "numeric", "--samples", "4", "--max-tokens", "6", "--sample", "20")
    assert done.returncode == 0, done.stderr
    rows = read_preferences(prefs)
    assert rows and "preference rows from 20 questions" in done.stdout
    asked = {int(p.question.split()[2]) for p in rows}
    assert max(asked) >= 20  # a random 20 of the 24 rows, not the first 20
    # The random tiny model is never right: each chosen answer is the label, or a wrong sample with the
    # label's answer in place of its own (and the rejected one is that sample).
    for p in rows:
        label = str(2 * int(p.question.split()[2]))
        assert p.chosen == label or (extract_answer(p.chosen) == label and extract_answer(p.rejected) != label
                                     and p.chosen == with_final_answer(p.rejected, label))
    assert oct(prefs.stat().st_mode & 0o777) == "0o600"  # the rows quote private labels
    out = tmp_path / "rm"
    done = run_command("train", "--preferences", str(prefs), "--base", "minilm", "--out", str(out),
                       "--epochs", "1", "--batch-size", "8")
    assert done.returncode == 0, done.stderr
    assert "held-out preference accuracy" in done.stdout and (out / "model.safetensors").is_file()
    rewards = RewardModelEvaluator(out).score("add", "What is 3 + 3?", ["6", "12"])
    assert len(rewards) == 2 and all(0.0 <= r <= 1.0 for r in rewards)


def test_the_command_names_the_flag_for_bad_input(tmp_path):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"question": "q", "chosen": "a", "rejected": "a"}])
    done = run_command("train", "--preferences", str(bad), "--out", str(tmp_path / "rm"))
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "--preferences" in done.stderr and "row 1" in done.stderr and "same answer" in done.stderr
    done = run_command("train", "--preferences", str(bad), "--out", str(tmp_path / "rm"), "--base", "no-such-model")
    assert "--preferences" in done.stderr  # the file is checked first
    good = write_jsonl(tmp_path / "good.jsonl", [{"question": "q", "chosen": "a", "rejected": "b"}])
    done = run_command("train", "--preferences", str(good), "--out", str(tmp_path / "rm"), "--base", "no-such-model")
    assert done.returncode != 0 and "--base" in done.stderr and "unknown model 'no-such-model'" in done.stderr
    done = run_command("preferences", "--data", str(good), "--model", "tiny-llama", "--out", str(tmp_path / "p.csv"))
    assert done.returncode != 0 and "--out" in done.stderr and ".jsonl" in done.stderr
    assert not (tmp_path / "rm").exists()
