"""Prompt text and answer extraction shared by the policy server and reward clients.

Contract
--------
* ``user_message(q)`` is the exact user-turn text the policy sees for a
  built-in domain: ``q.strip() + " " + INSTRUCTION`` (callers apply the
  tokenizer's chat template; stripping matters for leg_counting, whose text
  ends in a newline). ``PromptFormat(instruction, system)`` is the same for
  any dataset: its ``user_text(q)`` is ``q.strip()`` followed by the
  instruction when there is one, and ``system`` is the system prompt (None:
  the chat template's own).
* ``extract_answer(reply)`` returns the *last* number in the reply as a
  canonical string, or ``None`` when the reply has no number.  Recognised:
  integers and decimals, an optional sign (``-``, ``+``, U+2212), thousands
  separators (``1,234``).  A ``-``/``+`` directly after a digit, letter or
  closing bracket is an operator, not a sign (``"7-3"`` -> ``"3"``), and a
  sign must touch its digits (``"7 - 3"`` -> ``"3"``, ``"is -3"`` -> ``"-3"``).
  Canonical form: no commas, no ``+``, no leading zeros, no trailing
  fractional zeros (``"+01,000.50"`` -> ``"1000.5"``, ``"7.0"`` -> ``"7"``,
  ``"-0"`` -> ``"0"``), so exact-match scorers compare numbers, not spellings.
* ``is_concise(reply)`` is True iff the stripped reply is one number,
  optionally followed by a single period (``"42"``, ``"-5."``, ``"1,234"``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["INSTRUCTION", "PromptFormat", "user_message", "extract_answer", "is_concise", "canonical_number"]

INSTRUCTION = "Answer with just the number."

_SIGN = r"[-+\u2212]"
_UNSIGNED = r"(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?"
# A sign only counts when it is not preceded by something it could be an operator after.
_NUMBER_RE = re.compile(rf"(?:(?<![\w)\]}}]){_SIGN})?{_UNSIGNED}")
_CONCISE_RE = re.compile(rf"{_SIGN}?{_UNSIGNED}\.?")


@dataclass(frozen=True)
class PromptFormat:
    """How a dataset's questions are put to the policy."""

    instruction: str = INSTRUCTION
    system: str | None = None

    def user_text(self, question_text: str) -> str:
        text = question_text.strip()
        return f"{text} {self.instruction.strip()}" if self.instruction.strip() else text


def user_message(question_text: str) -> str:
    """The user turn for a built-in domain's question: the question followed by the instruction."""
    return PromptFormat().user_text(question_text)


def canonical_number(s: str) -> str:
    """Canonical spelling of a numeric string (see module docstring)."""
    s = s.replace("\u2212", "-").replace(",", "").replace(" ", "")
    neg = s.startswith("-")
    s = s.lstrip("+-")
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    s = s.lstrip("0") or "0"
    if s.startswith("."):
        s = "0" + s
    return "-" + s if neg and s != "0" else s


def extract_answer(completion: str) -> str | None:
    """The last number in ``completion`` (canonical string), or None."""
    if not completion:
        return None
    matches = _NUMBER_RE.findall(completion)
    if not matches:
        return None
    return canonical_number(matches[-1])


def is_concise(completion: str) -> bool:
    """True iff the whole stripped reply is a single number, optionally followed by '.'."""
    return bool(completion) and _CONCISE_RE.fullmatch(completion.strip()) is not None
