"""The main job's summary: accuracy before and after, and whether the change is more than noise."""

import json

from fedgrpo.job.evaluate import Accuracy
from fedgrpo.job.report import paired_change, write_summary


def accuracy(correct: dict[str, list[int]], version: int) -> Accuracy:
    flat = [x for v in correct.values() for x in v]
    return Accuracy({d: sum(v) / len(v) for d, v in correct.items()}, sum(flat) / len(flat), version, len(flat),
                    correct)


def test_a_large_paired_gain_is_an_improvement_and_a_small_one_is_noise():
    before = accuracy({"a": [0] * 100, "b": [1] * 50 + [0] * 50}, 0)
    big = accuracy({"a": [1] * 30 + [0] * 70, "b": [1] * 50 + [0] * 50}, 24)
    small = accuracy({"a": [1] * 2 + [0] * 98, "b": [1] * 50 + [0] * 50}, 24)
    worse = accuracy({"a": [0] * 100, "b": [0] * 100}, 24)
    gain = paired_change(before, big)
    assert gain["difference"] == 0.15 and gain["improvement"] == "holds" and gain["questions"] == 200
    assert 0 < gain["interval"][0] < 0.15 < gain["interval"][1]
    assert paired_change(before, small)["improvement"] == "inconclusive"
    assert paired_change(before, worse)["improvement"] == "does not hold"
    # answers the checker could not judge differ before and after: no pairing, no claim
    assert paired_change(before, accuracy({"a": [1] * 99, "b": [1] * 100}, 24)) is None


def test_the_summary_keeps_each_questions_outcome_and_the_change(tmp_path):
    before = accuracy({"a": [0, 1, 0, 0]}, 0)
    after = accuracy({"a": [1, 1, 1, 0]}, 3)
    run = {"run_id": "r", "state": "RUN_STATE_SUCCEEDED", "spec": {}}
    steps = [{"step": i, "reward_mean": r, "routing_precision": 1.0, "step_seconds": 2.0}
             for i, r in enumerate([0.0, 0.2, 0.4, 0.8], 1)]
    summary = write_summary(tmp_path / "summary.json", run, before, after, steps, extra={"seconds": 9})
    written = json.loads((tmp_path / "summary.json").read_text())
    assert written["accuracy_after"]["correct"] == {"a": [1, 1, 1, 0]} and written["seconds"] == 9
    assert written["accuracy_change"]["difference"] == 0.5 == summary["accuracy_change"]["difference"]
    assert (written["reward_mean_first_quarter"], written["reward_mean_last_quarter"]) == (0.0, 0.8)
    assert write_summary(tmp_path / "s.json", run, None, None, steps)["accuracy_change"] is None
