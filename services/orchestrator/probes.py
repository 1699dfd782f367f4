"""What a competence probe looks like on the wire, and when a client is probed again (pure).

A probe is a Score call on a labelled auxiliary item whose candidates have
known correctness. A client must not be able to tell it from training work,
or it could answer probes well and training badly, or answer a fixed probe
pattern without holding any data (issue 10). So:

- ``probe_run_id(live)``: the run id a probe carries is the id of the run
  executing now when there is one, else a fresh id in the format real run
  ids have (``runs.new_run_id``), a new one per probe pass; never a constant.
- ``probe_candidates(item, rng, count, distractors)``: ``count`` candidates
  (a live run's ``candidates_per_question``, else the spec default) written
  in the forms a policy's completions take (a bare answer, a sentence, a
  worked line, no answer at all), the right answer in a random number of
  them (0 to ``count``), wrong ones otherwise, in random order: for a whole
  number, numbers near it; for any other answer (a code, a word), the other
  answers of its domain in the auxiliary set (``distractors``), else the
  answer with a digit added. Question
  ids are the bank's (a hash of the text), as in training.
- ``description_signature(client)``: what a probe measured depends on
  (domains, evaluator kinds, reward range); ``probe_due`` says a client is
  probed again when it changed, or when its last probe is older than
  ``reprobe_seconds`` (0: never for age).

Not hidden: the items themselves come from the tail of the federation's
question bank, which training never samples (``auxiliary.py``), so a client
that knows the bank's seed and size can tell auxiliary questions apart; the
online confidence update (on by default) is what catches a client that
judges probes and training differently.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from fedgrpo.tasks import LabelledQuestion

from .runs import new_run_id

# probe_due's answer for a changed description (the caller drops what the client judged before).
DESCRIPTION_CHANGED = "its description changed"
# Candidates per probe outside a run: RunConfig's default candidates_per_question.
DEFAULT_CANDIDATES = 8

# The forms a policy's completions take to "Answer with just the number." ({n}: a number).
ANSWER_FORMS = (
    "{n}", "{n}", "{n}.", " {n}", "{n}\n", "The answer is {n}.", "Answer: {n}", "**{n}**",
    "The result is {n}", "I think it is {n}.", "= {n}", "So the answer is {n}.",
)
# The forms whose answer a checker of text answers reads (fedgrpo.data.checkers.final_answer): for codes, words.
TEXT_ANSWER_FORMS = (
    "{n}", "{n}", "{n}.", " {n}", "{n}\n", "The answer is {n}.", "Answer: {n}", "**{n}**", "So the answer is {n}.",
)
# Completions with no number: wrong whatever the question.
NO_ANSWER = ("I don't know.", "The answer is", "Let me think step by step.")


@dataclass(frozen=True)
class LiveRun:
    """The run executing now, as probes imitate it."""

    run_id: str
    candidates: int


def probe_run_id(live: LiveRun | None) -> str:
    """The run id of a probe pass: the live run's, else a fresh id shaped like a real one."""
    return live.run_id if live is not None else new_run_id()


def wrong_numbers(answer: str, rng: random.Random, count: int) -> list[str]:
    """``count`` numbers different from ``answer`` and near it (a policy's typical misses)."""
    try:
        value = int(answer)
    except ValueError:
        return [answer + str(rng.randint(1, 9)) for _ in range(count)]
    offsets = [d for d in range(-10, 11) if d != 0]
    return [str(value + rng.choice(offsets)) for _ in range(count)]


def wrong_answers(answer: str, rng: random.Random, count: int, distractors: Sequence[str] = ()) -> list[str]:
    """``count`` wrong answers: near numbers for a whole number, else other answers of the domain."""
    others = sorted({d for d in distractors if d.strip() and d.strip() != answer.strip()})
    try:
        int(answer)
    except ValueError:
        if others:
            return [rng.choice(others) for _ in range(count)]
    return wrong_numbers(answer, rng, count)


def probe_candidates(
    item: LabelledQuestion, rng: random.Random, count: int = DEFAULT_CANDIDATES, distractors: Sequence[str] = ()
) -> tuple[list[str], list[bool]]:
    """``count`` policy-like candidates of known correctness for ``item``, in random order, and their truth."""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    answer = str(item.entry["answer"])
    try:
        int(answer)
        forms = ANSWER_FORMS
    except ValueError:
        forms = TEXT_ANSWER_FORMS
    right = rng.randint(0, count)
    candidates = [(rng.choice(forms).format(n=answer), True) for _ in range(right)]
    for number in wrong_answers(answer, rng, count - right, distractors):
        if rng.random() < 0.1:
            candidates.append((rng.choice(NO_ANSWER), False))
        else:
            candidates.append((rng.choice(forms).format(n=number), False))
    rng.shuffle(candidates)
    return [c for c, _ in candidates], [t for _, t in candidates]


def description_signature(domains: Sequence[str], evaluator_kinds: Sequence[int], low: float, high: float) -> tuple:
    """What a client's probe results depend on: its domains, evaluator kinds and reward range."""
    return (tuple(sorted(domains)), tuple(sorted(evaluator_kinds)), float(low), float(high))


def probe_due(
    signature: tuple, probed_signature: tuple | None, probed_at: float | None, now: float, reprobe_seconds: float
) -> str | None:
    """Why a client must be probed (again) now, or None.

    ``probed_signature``/``probed_at``: its description and the time of its
    last full probe (None: never probed in this life of the orchestrator).
    """
    if probed_at is None:
        return "never probed"
    if probed_signature is not None and signature != probed_signature:
        return DESCRIPTION_CHANGED
    if reprobe_seconds > 0 and now - probed_at >= reprobe_seconds:
        return f"its last probe is {now - probed_at:.0f}s old"
    return None
