"""The server's question datasets: files read at start, question text only.

``load_datasets(files, instructions, systems)`` reads each ``NAME=PATH``
(:func:`fedgrpo.data.files.read_rows`; an answer column, if the file has
one, is not kept: the server trains on questions and learns rewards from the
clients) into a :class:`QuestionDataset`: its questions by domain (a row
without a domain belongs to the domain ``NAME``), each question once by
normalised text (repeats counted), and how its questions are put to the
policy (:class:`fedgrpo.tasks.PromptFormat`: the dataset's instruction after
the question, the row's or the dataset's system prompt). Any unreadable file
raises :class:`fedgrpo.data.files.DataFileError` naming it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from fedgrpo.data.files import deduplicate, read_rows
from fedgrpo.tasks import PromptFormat, Question, question_id

__all__ = ["QuestionDataset", "load_datasets"]


@dataclass(frozen=True)
class QuestionDataset:
    """One registered dataset: its questions by domain and how they are prompted."""

    name: str
    path: Path
    by_domain: Mapping[str, tuple[Question, ...]]
    repeated: int = 0
    prompt_format: PromptFormat = PromptFormat(instruction="")
    systems: Mapping[str, str] = field(default_factory=dict)  # question id -> a row's own system prompt

    @property
    def domains(self) -> list[str]:
        return sorted(self.by_domain)

    def __len__(self) -> int:
        return sum(len(questions) for questions in self.by_domain.values())

    def prompt(self, question: Question) -> tuple[str, str | None]:
        """(user text, system prompt or None) of one of its questions."""
        system = self.systems.get(question.question_id, self.prompt_format.system)
        return self.prompt_format.user_text(question.text), system


def load_dataset(
    name: str, path: Path, instruction: str = "", system: str | None = None
) -> QuestionDataset:
    rows, repeated = deduplicate(read_rows(path))
    by_domain: dict[str, list[Question]] = {}
    systems: dict[str, str] = {}
    for row in rows:
        domain = row.domain or name
        question = Question(question_id(domain, row.question), domain, row.question)
        by_domain.setdefault(domain, []).append(question)
        if row.system:
            systems[question.question_id] = row.system
    return QuestionDataset(
        name, Path(path), {d: tuple(qs) for d, qs in by_domain.items()}, repeated,
        PromptFormat(instruction=instruction, system=system or None), systems,
    )


def load_datasets(
    files: Mapping[str, str | Path],
    instructions: Mapping[str, str] | None = None,
    systems: Mapping[str, str] | None = None,
) -> dict[str, QuestionDataset]:
    instructions, systems = instructions or {}, systems or {}
    return {
        name: load_dataset(name, Path(path), instructions.get(name, ""), systems.get(name))
        for name, path in files.items()
    }
