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

:class:`DatasetLibrary` holds every dataset runs may name: the files given
at start (``source`` "file", read-only) and those imported through the API
(``source`` "imported"), which it stores as JSON Lines plus a small JSON of
their prompt format in its folder (atomically: a temporary file renamed into
place) and reads back at the next start. Its ``datasets`` mapping is what the
question bank samples from; add and delete hold a lock.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from fedgrpo.atomic_file import replace_file
from fedgrpo.data.files import Row, deduplicate, read_rows
from fedgrpo.tasks import PromptFormat, Question, question_id

__all__ = ["DatasetExists", "DatasetLibrary", "QuestionDataset", "dataset_from_rows", "load_dataset", "load_datasets"]


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
    return dataset_from_rows(name, path, read_rows(path), instruction, system)


def dataset_from_rows(
    name: str, path: Path, rows: Iterable[Row], instruction: str = "", system: str | None = None
) -> QuestionDataset:
    rows, repeated = deduplicate(rows)
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


class DatasetExists(ValueError):
    """A dataset of that name is already registered."""


class DatasetLibrary:
    """Every dataset runs may name (see module docstring)."""

    def __init__(self, folder: Path, files: Mapping[str, QuestionDataset] | None = None) -> None:
        self.folder = Path(folder)
        self._lock = threading.Lock()
        self.datasets: dict[str, QuestionDataset] = dict(files or {})
        self.sources = {name: "file" for name in self.datasets}
        for path in sorted(self.folder.glob("*.jsonl")):
            name = path.stem
            if name in self.datasets:
                continue  # a --dataset of the same name wins; the stored one stays on disk
            meta = json.loads(path.with_suffix(".json").read_text()) if path.with_suffix(".json").exists() else {}
            self.datasets[name] = load_dataset(name, path, meta.get("instruction", ""), meta.get("system"))
            self.sources[name] = "imported"

    def add(self, name: str, rows: list[Row], instruction: str = "", system: str | None = None) -> QuestionDataset:
        """Store and register an imported dataset; DatasetExists if the name is taken."""
        with self._lock:
            if name in self.datasets:
                raise DatasetExists(f"a dataset named {name!r} exists ({self.sources[name]})")
            self.folder.mkdir(parents=True, exist_ok=True)
            path = self.folder / f"{name}.jsonl"
            replace_file(path.with_suffix(".json"), json.dumps({"instruction": instruction, "system": system}))
            replace_file(path, "".join(
                json.dumps({"question": r.question, "domain": r.domain or name, "system": r.system or ""},
                           ensure_ascii=False) + "\n"
                for r in rows
            ))
            dataset = dataset_from_rows(name, path, rows, instruction, system)
            self.datasets[name] = dataset
            self.sources[name] = "imported"
            return dataset

    def delete(self, name: str) -> None:
        """Forget an imported dataset and its files (KeyError if unknown; ValueError if from a file)."""
        with self._lock:
            if name not in self.datasets:
                raise KeyError(name)
            if self.sources[name] != "imported":
                raise ValueError(f"dataset {name!r} was given at start (--dataset); remove the flag to drop it")
            del self.datasets[name], self.sources[name]
            for path in (self.folder / f"{name}.jsonl", self.folder / f"{name}.json"):
                path.unlink(missing_ok=True)
