"""Every checker on hand-made cases, the user's own checker by module:function, and what makes a
candidate "cannot judge" (NaN) instead of stopping the client."""

from __future__ import annotations

import logging
import math
import sys
import textwrap

import pytest

from fedgrpo.data.checkers import BUILT_IN, CheckerError, final_answer, load_checker


def check(spec: str, candidate: str, label: str, domain: str = "d", metadata: dict | None = None,
          **options) -> float:
    checker = load_checker(spec, **options)
    return checker(candidate, label, question="q?", domain=domain, metadata=metadata or {}, question_id="q-1")


def test_built_in_names():
    assert BUILT_IN == ("exact", "numeric", "choice", "regex", "math", "reasoning-gym")


@pytest.mark.parametrize(
    "candidate, answer",
    [
        ("Paris", "Paris"),
        ("I think the answer is Paris.", "Paris."),
        ("Reasoning...\nAnswer: 42", "42"),
        ("so \\boxed{\\frac{1}{2}} it is", "\\frac{1}{2}"),
        ("first line\n\n  last line  \n", "last line"),
        ("", ""),
    ],
)
def test_final_answer(candidate, answer):
    assert final_answer(candidate) == answer


@pytest.mark.parametrize(
    "candidate, label, reward",
    [
        ("Paris", "Paris", 1.0),
        ("The answer is paris.", "Paris", 1.0),  # case-folded, trailing period dropped
        ("The answer is **Paris**", " Paris ", 1.0),
        ("Lyon", "Paris", 0.0),
        ("Paris, or maybe Lyon", "Paris", 0.0),
        ("The answer is 007", "007", 1.0),
        ("The answer is 7", "007", 0.0),
    ],
)
def test_exact(candidate, label, reward):
    assert check("exact", candidate, label) == reward


@pytest.mark.parametrize(
    "candidate, label, tolerance, reward",
    [
        ("42", "42", 1e-6, 1.0),
        ("It is 1,000.", "1000", 1e-6, 1.0),
        ("3.14159", "3.1416", 1e-6, 0.0),
        ("3.14159", "3.1416", 1e-4, 1.0),
        ("-5", "5", 1e-6, 0.0),
        ("no number here", "5", 1e-6, 0.0),
        ("2 then 7", "7", 1e-6, 1.0),  # the last number counts
    ],
)
def test_numeric(candidate, label, tolerance, reward):
    assert check("numeric", candidate, label, tolerance=tolerance) == reward


@pytest.mark.parametrize(
    "candidate, label, reward",
    [
        ("B", "B", 1.0),
        ("The answer is (C).", "c", 1.0),
        ("A is wrong, so the answer is D", "D", 1.0),
        ("A is wrong, so the answer is D", "A", 0.0),
        ("I am not sure", "A", 0.0),
    ],
)
def test_choice(candidate, label, reward):
    assert check("choice", candidate, label) == reward


@pytest.mark.parametrize(
    "candidate, label, reward",
    [
        ("The answer is colour.", "colou?r", 1.0),
        ("The answer is color", "colou?r", 1.0),
        ("The answer is colours", "colou?r", 0.0),
        ("Answer: 12 kg", r"12\s*(kg|kilograms)", 1.0),
    ],
)
def test_regex(candidate, label, reward):
    assert check("regex", candidate, label) == reward


@pytest.mark.parametrize(
    "candidate, label, reward",
    [
        ("0.5", "1/2", 1.0),
        ("The answer is \\boxed{0.5}", "\\frac{1}{2}", 1.0),
        ("$\\frac{2}{4}$", "0.5", 1.0),
        ("\\boxed{x \\cdot x}", "x^2", 1.0),
        ("\\boxed{\\sqrt{4}}", "2", 1.0),
        ("\\boxed{3}", "4", 0.0),
        ("\\boxed{0.51}", "1/2", 0.0),
    ],
)
def test_math_equivalence_with_math_verify(candidate, label, reward):
    assert check("math", candidate, label) == reward


def test_reasoning_gym_scores_as_the_built_in_domains_always_have():
    entry = {"expression": "3 + 4"}
    assert check("reasoning-gym", "7", "7", domain="add1", metadata=entry) == 1.0
    assert check("reasoning-gym", "The sum is 7.", "7", domain="add1", metadata=entry) == 0.9
    assert check("reasoning-gym", "8", "7", domain="add1", metadata=entry) == 0.1
    assert check("reasoning-gym", "17", "7", domain="add1", metadata=entry) == 0.1  # no partial credit
    assert check("reasoning-gym", "no idea", "7", domain="add1", metadata=entry) == 0.0


def test_a_checker_that_cannot_judge_answers_nan_and_logs_the_question(caplog):
    with caplog.at_level(logging.WARNING, logger="fedgrpo.data.checkers"):
        assert math.isnan(check("numeric", "5", "five"))
        assert math.isnan(check("choice", "A", "Z"))
        assert math.isnan(check("regex", "x", "("))  # a label that is no regular expression
        assert math.isnan(check("math", "1", "\\frac{"))
        assert math.isnan(check("reasoning-gym", "7", "7", domain="medicine"))
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 5 and all("question q-1" in m for m in messages)
    assert "label 'five' is not a number" in messages[0]
    assert "domain 'medicine' is not a built-in reasoning-gym domain" in messages[4]


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """A user's checker module on the client's PYTHONPATH, as an organisation would write it."""
    (tmp_path / "org_checks.py").write_text(textwrap.dedent('''
        def same_code(candidate, label):
            return candidate.strip().upper() == label.upper()

        def graded(candidate, label, *, domain, metadata):
            return metadata["weight"] * (label in candidate) if domain == "icd" else 0.0

        def everything(candidate, label, **context):
            return 0.25 if context["question"].endswith("?") else 0.0

        def broken(candidate, label):
            raise RuntimeError("database offline")

        def words(candidate, label):
            return "yes"

        def huge(candidate, label):
            return 7

        def too_many(candidate, label, threshold):
            return 1.0

        def too_few(candidate):
            return 1.0

        NOT_A_FUNCTION = 3
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "org_checks"
    sys.modules.pop("org_checks", None)


def test_a_users_checker_by_module_and_function(plugin):
    assert check(f"{plugin}:same_code", " j45 ", "J45") == 1.0
    assert check(f"{plugin}:same_code", "J46", "J45") == 0.0
    assert check(f"{plugin}:graded", "it is J45", "J45", domain="icd", metadata={"weight": 0.5}) == 0.5
    assert check(f"{plugin}:graded", "it is J45", "J45", domain="other", metadata={"weight": 0.5}) == 0.0
    assert check(f"{plugin}:everything", "x", "y") == 0.25
    assert check(f"{plugin}:huge", "x", "y") == 1.0  # clamped into [0, 1]
    assert math.isnan(check(f"{plugin}:broken", "x", "y"))
    assert math.isnan(check(f"{plugin}:words", "x", "y"))


@pytest.mark.parametrize(
    "spec, message",
    [
        ("astrology", "unknown checker 'astrology': expected one of exact, numeric"),
        ("no_such_module_xyz:check", "module 'no_such_module_xyz' does not import"),
        ("{plugin}:absent", "has no 'absent'"),
        ("{plugin}:NOT_A_FUNCTION", "is a int, not a function"),
        ("{plugin}:too_many", r"requires \['threshold'\]"),
        ("{plugin}:too_few", "must take \\(candidate, label\\)"),
        (":f", "expected module:function"),
    ],
)
def test_a_checker_that_cannot_be_used_is_refused_at_start(plugin, spec, message):
    with pytest.raises(CheckerError, match=message):
        load_checker(spec.format(plugin=plugin))


def test_a_checker_from_an_entry_point(plugin, tmp_path):
    """An installed package's entry point: a real dist-info folder on the path, as pip would leave it."""
    info = tmp_path / "org_checks-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: org-checks\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[fedgrpo.checkers]\nicd-codes = {plugin}:same_code\n")
    assert check("icd-codes", "j45", "J45") == 1.0
    assert check("icd-codes", "j46", "J45") == 0.0
