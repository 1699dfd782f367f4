"""Checkers: how a reward client compares a candidate answer with its private label.

Contract
--------
``load_checker(spec, tolerance=...)`` returns a :class:`Checker` for

* a built-in name (``BUILT_IN``):

  - ``exact``: the candidate's final answer equals the label, both
    normalised (:func:`fedgrpo.data.files.normalise`) and case-folded, a
    trailing period dropped.
  - ``numeric``: the candidate's last number equals the label's number within
    ``tolerance`` (relative to ``max(1, |label|)``; default 1e-6).
  - ``choice``: the candidate's last standalone capital letter A-E (in its
    final answer, else anywhere) is the label's letter.
  - ``regex``: the label is a Python regular expression that must match the
    candidate's whole final answer.
  - ``math``: symbolic equivalence with the ``math-verify`` library
    (``1/2``, ``0.5``, ``\\frac{1}{2}`` and ``\\boxed{1/2}`` are one answer).
    A label without ``$`` or ``\\boxed`` is read as LaTeX math; candidates
    are read as math-verify reads model output (LaTeX or plain numbers).
  - ``reasoning-gym``: the built-in domain's own ``score_answer`` on the
    candidate's last number, with the row's metadata, as
    :func:`fedgrpo.tasks.score_completion` (0.9 x correct + 0.1 x concise),
    exactly how the built-in domains have always been scored.

  The final answer of a candidate is the content of its last
  ``\\boxed{...}``, else what follows its last "answer is" / "answer:", else
  its last non-empty line.

* a user's Python function, ``module:function`` (importable from the
  client's ``PYTHONPATH``) or the name of an entry point in the group
  ``fedgrpo.checkers`` of an installed package. Its signature::

      def check(candidate: str, label: str, *, question: str, domain: str, metadata: dict) -> float | bool

  It receives the keyword arguments it names (all of them with ``**kwargs``)
  and must take ``candidate`` and ``label`` positionally. ``True``/``False``
  mean 1/0; a number is clamped into [0, 1].

Every checker answers a reward in [0, 1] per candidate, or NaN, "cannot
judge", when it raises or returns a non-number or NaN: that is logged with the
question id and never stops the client. A spec that names nothing, a function
that cannot take ``(candidate, label)``, raises :class:`CheckerError` at
start. Checkers hold no state and may be called from several threads.
"""

from __future__ import annotations

import inspect
import logging
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from fedgrpo.plugins import load_function, unit_score
from fedgrpo.tasks import DOMAINS, canonical_number, extract_answer, score_completion

from .files import normalise

__all__ = ["BUILT_IN", "ENTRY_POINT_GROUP", "Checker", "CheckerError", "final_answer", "load_checker"]

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "fedgrpo.checkers"
CONTEXT = ("question", "domain", "metadata")
_BOXED = re.compile(r"\\boxed\{((?:[^{}]|\{[^{}]*\})*)\}")
_ANSWER_IS = re.compile(r"answer\s*(?:is|:)\s*:?\s*(.+)", re.IGNORECASE)
_CHOICE = re.compile(r"(?<![A-Za-z])([A-E])(?![A-Za-z])")


class CheckerError(ValueError):
    """A checker spec that cannot be used, with what was expected."""


def final_answer(candidate: str) -> str:
    """The part of a candidate that states its answer (see module docstring)."""
    boxed = _BOXED.findall(candidate)
    if boxed:
        return boxed[-1].strip()
    stated = _ANSWER_IS.findall(candidate)
    if stated:
        return stated[-1].strip()
    lines = [line.strip() for line in candidate.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def states_answer(candidate: str) -> bool:
    """Whether a candidate marks its final answer (``\\boxed{...}`` or "answer is ..."/"answer: ...")."""
    return bool(_BOXED.search(candidate) or _ANSWER_IS.search(candidate))


def _plain(text: str) -> str:
    return normalise(text).strip("*\"'` ").rstrip(".").strip().casefold()


def exact(candidate: str, label: str) -> bool:
    return _plain(final_answer(candidate)) == _plain(label)


def _numeric(tolerance: float) -> Callable[[str, str], bool]:
    def numeric(candidate: str, label: str) -> bool:
        try:
            expected = float(canonical_number(label.strip()))
        except ValueError:
            raise ValueError(f"label {label!r} is not a number") from None
        got = extract_answer(candidate)
        return got is not None and abs(float(got) - expected) <= tolerance * max(1.0, abs(expected))

    return numeric


def choice(candidate: str, label: str) -> bool:
    expected = label.strip().strip("()").upper()
    if len(expected) != 1 or expected not in "ABCDE":
        raise ValueError(f"label {label!r} is not a choice A-E")
    letters = _CHOICE.findall(final_answer(candidate)) or _CHOICE.findall(candidate)
    return bool(letters) and letters[-1] == expected


def regex(candidate: str, label: str) -> bool:
    return re.fullmatch(label, final_answer(candidate).rstrip(".").strip()) is not None


def math_equivalent(candidate: str, label: str) -> bool:
    from math_verify import parse, verify

    logging.getLogger("math_verify").setLevel(logging.ERROR)  # it warns on every call that we disabled timeouts
    # No signal-based timeouts: they work only on the main thread, and Score runs on a worker thread.
    gold = parse(label if ("$" in label or "\\boxed" in label) else f"${label}$", parsing_timeout=None)
    if not any(not isinstance(parsed, str) for parsed in gold):  # only the raw text back: nothing it understood
        raise ValueError(f"label {label!r} is not math that math-verify can read")
    answer = parse(candidate, parsing_timeout=None)
    return bool(answer) and verify(gold, answer, timeout_seconds=None)


def reasoning_gym(candidate: str, label: str, *, question: str, domain: str, metadata: Mapping) -> float:
    if domain not in DOMAINS:
        raise ValueError(f"domain {domain!r} is not a built-in reasoning-gym domain ({', '.join(sorted(DOMAINS))})")
    return score_completion(domain, {"question": question, "answer": label, "metadata": dict(metadata)}, candidate)


def _built_in(tolerance: float) -> dict[str, Callable[..., Any]]:
    return {
        "exact": exact,
        "numeric": _numeric(tolerance),
        "choice": choice,
        "regex": regex,
        "math": math_equivalent,
        "reasoning-gym": reasoning_gym,
    }


BUILT_IN = tuple(_built_in(0.0))


@dataclass(frozen=True)
class Checker:
    """A check function and the context arguments it takes; calling it never raises."""

    name: str
    function: Callable[..., Any]
    context: tuple[str, ...]

    def __call__(
        self, candidate: str, label: str, *, question: str, domain: str, metadata: Mapping, question_id: str = ""
    ) -> float:
        """The reward of ``candidate`` in [0, 1], or NaN when this checker cannot judge it."""
        given = {"question": question, "domain": domain, "metadata": metadata}
        try:
            value = self.function(candidate, label, **{k: given[k] for k in self.context})
        except Exception as err:  # a user's checker may raise anything: that candidate cannot be judged
            log.warning("checker %s cannot judge a candidate of question %s: %s: %s",
                        self.name, question_id or "?", type(err).__name__, err)
            return math.nan
        score = unit_score(value)
        if score is not None:
            return score
        log.warning("checker %s answered %r for a candidate of question %s: not a number, so it cannot judge it",
                    self.name, value, question_id or "?")
        return math.nan


def load_checker(spec: str, tolerance: float = 1e-6) -> Checker:
    """The checker named by ``spec`` (see module docstring); :class:`CheckerError` if none."""
    spec = spec.strip()
    built_in = _built_in(tolerance)
    if spec in built_in:
        return Checker(spec, built_in[spec], _context_of(spec, built_in[spec]))
    function = load_function(spec, ENTRY_POINT_GROUP, "checker", CheckerError, "one of " + ", ".join(BUILT_IN))
    return Checker(spec, function, _context_of(spec, function))


def _context_of(spec: str, function: Callable[..., Any]) -> tuple[str, ...]:
    """Which of question, domain, metadata the function takes; CheckerError if it cannot take the call."""
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return ()  # a builtin without a signature: call it with (candidate, label) only
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) < 2 and not any(p.kind == p.VAR_POSITIONAL for p in parameters):
        raise CheckerError(f"checker {spec!r} must take (candidate, label) as its first two arguments")
    if any(p.kind == p.VAR_KEYWORD for p in parameters):
        return CONTEXT
    names = {p.name for p in parameters}
    required = [
        p.name for p in list(parameters)[2:]
        if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name not in CONTEXT
    ]
    if required:
        raise CheckerError(
            f"checker {spec!r} requires {required}; a checker is called with (candidate, label) and may take "
            f"the keyword arguments {', '.join(CONTEXT)}"
        )
    return tuple(name for name in CONTEXT if name in names)
