"""`fedgrpo evaluate`: a real policy answers a labelled file greedily and the chosen checker decides;
checkers that always accept, always refuse or fail bound what the command can report."""

from __future__ import annotations

import json
import sys

import pytest

from fedgrpo.cli import main
from fedgrpo.data.make import make_rows, write_rows

CHECKS = '''
def always(candidate, label):
    return True

def never(candidate, label):
    return 0.0

def broken(candidate, label):
    raise RuntimeError("no judge")
'''


@pytest.fixture
def files(tmp_path, monkeypatch):
    (tmp_path / "eval_checks.py").write_text(CHECKS)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield write_rows(make_rows("add1", 12, seed=5), tmp_path / "add1.jsonl")
    sys.modules.pop("eval_checks", None)


def evaluate(capsys, dataset, model_cache, *args):
    main(["evaluate", "--dataset", str(dataset), "--model", "tiny-policy", "--cache-dir", str(model_cache),
          "--max-tokens", "6", *args])
    return capsys.readouterr().out


@pytest.mark.integration
def test_the_checker_decides_what_counts_as_right(files, model_cache, capsys, tmp_path):
    out = evaluate(capsys, files, model_cache, "--checker", "eval_checks:always", "--json", str(tmp_path / "a.json"))
    assert "add1.jsonl: 12 questions" in out and "  add1               1.000  (12 questions)" in out
    report = json.loads((tmp_path / "a.json").read_text())
    assert report["overall"] == 1.0 and len(report["questions"]) == 12
    assert all(q["right"] and q["domain"] == "add1" and isinstance(q["answer"], str) for q in report["questions"])
    out = evaluate(capsys, files, model_cache, "--checker", "eval_checks:never")
    assert "  all                0.000" in out
    out = evaluate(capsys, files, model_cache, "--checker", "eval_checks:broken", "--json", str(tmp_path / "b.json"))
    assert "(12 the checker could not judge, left out)" in out
    report = json.loads((tmp_path / "b.json").read_text())
    assert report["overall"] is None and report["cannot_judge"] == 12
    assert {q["reward"] for q in report["questions"]} == {None}


@pytest.mark.integration
def test_reasoning_gym_accuracy_is_the_share_of_rewards_at_least_a_half(files, model_cache, capsys, tmp_path):
    evaluate(capsys, files, model_cache, "--checker", "reasoning-gym", "--instruction", "Answer with just the number.",
             "--json", str(tmp_path / "r.json"))
    report = json.loads((tmp_path / "r.json").read_text())
    rewards = [q["reward"] for q in report["questions"]]
    assert set(rewards) <= {0.0, 0.1, 0.9, 1.0}
    assert report["overall"] == sum(r >= 0.5 for r in rewards) / 12
    assert [q["question"] for q in report["questions"]] == [r["question"] for r in make_rows("add1", 12, seed=5)]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--checker", "astrology"], "fedgrpo evaluate: --checker: unknown checker 'astrology'"),
        (["--dataset", "/nonexistent.jsonl"], "fedgrpo evaluate: --dataset: /nonexistent.jsonl: no such file"),
        (["--model", "gpt-9"], "fedgrpo evaluate: --model: unknown model 'gpt-9'"),
        (["--max-tokens", "0"], "fedgrpo evaluate: --max-tokens: got 0"),
    ],
)
def test_bad_input_is_one_line_naming_the_flag(files, tmp_path, args, message):
    base = {"--dataset": str(files), "--model": "tiny-policy", "--checker": "exact"}
    for flag, value in zip(args[::2], args[1::2]):
        base[flag] = value
    with pytest.raises(SystemExit, match=message.replace("(", r"\(").replace(")", r"\)")):
        main(["evaluate", *[x for pair in base.items() for x in pair], "--cache-dir", str(tmp_path / "m")])
