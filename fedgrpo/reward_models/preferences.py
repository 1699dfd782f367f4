"""Preference rows: (question, chosen, rejected[, domain]), read from a file or built from labels.

Contract
--------
``read_preferences(path, columns)`` reads a JSON Lines, CSV, Parquet file or a
``datasets`` folder (through :func:`fedgrpo.data.files.read_table`) with the
columns ``question`` (or ``prompt``), ``chosen``, ``rejected`` and an optional
``domain``. An empty file, a missing column, an empty cell, or a row whose
chosen and rejected answers are the same text (after
:func:`fedgrpo.data.files.normalise`) raises :class:`DataFileError` naming the
file, the row and the field.

``pair_candidates(label, scored, max_pairs, corrected)`` is the pure rule that
turns one labelled question's sampled candidates into preference pairs:
candidates the checker scored right (reward >= 0.5) are chosen over the ones
it scored wrong (< 0.5); NaN ("cannot judge") candidates are left out;
repeats (same normalised text) count once. When no sampled candidate is
right, a wrong candidate's *corrected* twin (``corrected[wrong]``: the same
text with its final answer replaced by the label, which the checker called
right) is chosen over it, so the pair differs only in the answer and a
reward model learns correctness rather than the label's bare format; a wrong
candidate without a twin is paired with the label itself (a client that
holds labels always knows one right answer). At most ``max_pairs`` pairs,
each wrong candidate used once, right ones taken in turn.
``with_final_answer(text, answer)`` builds such a twin: ``text`` with its last
number replaced by ``answer`` (None when either is not a number).

``make_preferences(rows, model_dir, checker, ...)`` samples ``samples``
candidates per labelled row with a local rollout engine (the orchestrator's:
vLLM or transformers, the model's chat template with the prompt format) and
pairs them. It runs on the client's own machine: the labels never leave it.
``write_preferences(prefs, path)`` writes JSON Lines atomically, readable
only by the owner (the rows quote private labels).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from fedgrpo.atomic_file import replace_file
from fedgrpo.data.files import DataFileError, Row, normalise, read_table, row_where, text_cell

__all__ = [
    "Preference", "PreferenceColumns", "read_preferences", "pair_candidates", "with_final_answer", "make_preferences",
    "write_preferences",
]

CORRECT = 0.5  # a checker reward at least this is a right answer (fedgrpo.tasks.CORRECT_THRESHOLD)


@dataclass(frozen=True)
class Preference:
    question: str
    chosen: str
    rejected: str
    domain: str | None = None
    where: str = ""


@dataclass(frozen=True)
class PreferenceColumns:
    question: str = "question"
    chosen: str = "chosen"
    rejected: str = "rejected"
    domain: str = "domain"


def read_preferences(path: Path | str, columns: PreferenceColumns = PreferenceColumns()) -> list[Preference]:
    """Every row of a preference file (see module docstring)."""
    path = Path(path)
    table = read_table(path)
    names = list(table.column_names)
    question = columns.question
    if question not in names and question == PreferenceColumns.question and "prompt" in names:
        question = "prompt"
    for field, column in (("question", question), ("chosen", columns.chosen), ("rejected", columns.rejected)):
        if column not in names:
            raise DataFileError(f"{path}: no {field} column {column!r}; its columns are {names}")
    if len(table) == 0:
        raise DataFileError(f"{path}: no rows; a preference file needs (question, chosen, rejected) rows")
    rows = []
    for index, record in enumerate(table, start=1):
        where = row_where(path, index)
        cells = {}
        for column in (question, columns.chosen, columns.rejected):
            cells[column] = text_cell(record.get(column))
            if not cells[column]:
                raise DataFileError(f"{where}: column {column!r} is empty")
        if normalise(cells[columns.chosen]) == normalise(cells[columns.rejected]):
            raise DataFileError(
                f"{where}: columns {columns.chosen!r} and {columns.rejected!r} hold the same answer "
                f"({cells[columns.chosen]!r}); a preference needs two different answers"
            )
        domain = text_cell(record.get(columns.domain)) if columns.domain in names else ""
        rows.append(Preference(cells[question], cells[columns.chosen], cells[columns.rejected], domain or None, where))
    return rows


def with_final_answer(text: str, answer: str) -> str | None:
    """``text`` with its last number replaced by ``answer`` (a number); None if either has no number."""
    from fedgrpo.tasks.prompts import _NUMBER_RE

    if not _NUMBER_RE.fullmatch(answer.strip()):
        return None
    last = None
    for last in _NUMBER_RE.finditer(text):
        pass
    if last is None:
        return None
    return text[: last.start()] + answer.strip() + text[last.end():]


def pair_candidates(
    label: str, scored: Sequence[tuple[str, float]], max_pairs: int, corrected: Mapping[str, str] | None = None,
) -> list[tuple[str, str]]:
    """(chosen, rejected) pairs from one question's scored candidates (see module docstring)."""
    if max_pairs < 1:
        raise ValueError(f"max_pairs must be at least 1, got {max_pairs}")
    right: list[str] = []
    wrong: list[str] = []
    seen: set[str] = set()
    for text, reward in scored:
        key = normalise(text)
        if not key or key in seen or math.isnan(reward):
            continue
        seen.add(key)
        (right if reward >= CORRECT else wrong).append(text)
    if not right:
        label_rejected = normalise(label) in {normalise(w) for w in wrong}
        twins = corrected or {}
        pairs = [(twins[w], w) if w in twins else (label, w) for w in wrong[:max_pairs]]
        # the checker called the label itself wrong: only checked twins are worth learning from
        return [(c, r) for c, r in pairs if c != label] if label_rejected else pairs
    pairs = []
    for i, rejected in enumerate(wrong[:max_pairs]):
        pairs.append((right[i % len(right)], rejected))
    return pairs


def make_preferences(
    rows: Sequence[Row], model_dir: Path, checker, prompt_format, *, samples: int = 8, max_pairs: int = 2,
    max_tokens: int = 48, temperature: float = 1.0, backend: str = "transformers", device: str = "cpu",
    dtype: str = "float32", seed: int = 0, batch: int = 16, progress: Callable[[int], None] | None = None,
) -> tuple[list[Preference], dict[str, int]]:
    """Preference rows for labelled ``rows``, candidates sampled from ``model_dir``; and counts for the log."""
    from fedgrpo.local_answers import answer_rows
    from fedgrpo.services.orchestrator.rollout import SamplingSettings
    from fedgrpo.tasks import question_id

    sampling = SamplingSettings(n=samples, temperature=temperature, top_p=1.0, max_tokens=max_tokens, seed=seed)
    preferences: list[Preference] = []
    counts = {"questions": 0, "candidates": 0, "right": 0, "cannot_judge": 0, "label_chosen": 0, "corrected_chosen": 0,
              "no_pair": 0}
    for answered in answer_rows(rows, model_dir, prompt_format, sampling, backend=backend, device=device, dtype=dtype,
                                seed=seed, batch=batch):
        for row, completions in answered:
            domain = row.domain or ""
            qid = question_id(domain, row.question)
            check = lambda text: checker(text, row.answer or "", question=row.question,  # noqa: E731
                                         domain=domain, metadata=row.metadata, question_id=qid)
            scored = [(c.text.strip(), check(c.text)) for c in completions]
            corrected = {}
            if not any(not math.isnan(r) and r >= CORRECT for _, r in scored):
                for text, _ in scored:
                    twin = with_final_answer(text, row.answer or "")
                    if twin is not None and twin != text and check(twin) >= CORRECT:
                        corrected[text] = twin
            counts["questions"] += 1
            counts["candidates"] += len(scored)
            counts["right"] += sum(1 for _, r in scored if not math.isnan(r) and r >= CORRECT)
            counts["cannot_judge"] += sum(1 for _, r in scored if math.isnan(r))
            pairs = pair_candidates(row.answer or "", scored, max_pairs, corrected)
            counts["no_pair"] += not pairs
            for chosen, rejected in pairs:
                counts["label_chosen"] += chosen == row.answer
                counts["corrected_chosen"] += chosen != row.answer and chosen in corrected.values()
                preferences.append(Preference(row.question, chosen, rejected, row.domain, row.where))
        if progress is not None:
            progress(len(answered))
    return preferences, counts


def write_preferences(preferences: Sequence[Preference], path: Path | str) -> Path:
    """JSON Lines (question, chosen, rejected, domain), written atomically, mode 0600."""
    path = Path(path)
    if path.suffix.lower() != ".jsonl":
        raise DataFileError(f"{path}: preferences are written as JSON Lines: give a .jsonl path")
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        json.dumps({"question": p.question, "chosen": p.chosen, "rejected": p.rejected, "domain": p.domain or ""},
                   ensure_ascii=False)
        for p in preferences
    ]
    replace_file(path, "".join(line + "\n" for line in lines))
    return path
