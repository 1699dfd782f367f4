"""Reading question and label files, through the Hugging Face `datasets` library.

Contract
--------
``read_rows(path, columns, labelled=...)`` reads a JSON Lines (``.jsonl``,
``.json``), CSV (``.csv``), Parquet (``.parquet``) file or a folder saved by
``datasets`` (``save_to_disk``; of a ``DatasetDict`` the ``train`` split, or
its only split) and returns one :class:`Row` per data row, in file order:

* ``question``: the column ``columns.question`` (default ``question``; when
  that column is absent, ``prompt``). Required, non-empty in every row.
* ``answer``: the column ``columns.answer`` (default ``answer``). Required
  and non-empty in every row when ``labelled``; otherwise read when present.
* ``domain``, ``system``: optional columns (defaults ``domain``,
  ``system``); an empty cell is ``None``.
* ``metadata``: optional column ``metadata``, a mapping or a JSON object
  string (how `fedgrpo datasets make` stores a reasoning-gym entry's
  metadata); ``{}`` when absent.

Cells are text: CSV is read with every column as a string (so ``007`` stays
``007``); numbers in JSON or Parquet become their decimal spelling (``7.0``
becomes ``7``). Nothing is cached to disk: the library's cache goes to a
temporary folder that is removed after the read, so a client's private
labels are not copied anywhere. Any problem raises :class:`DataFileError`
naming the file, the row (1-based data row; for JSON Lines also the line) and
the column, and what was expected.

``normalise(text)`` is how questions are compared: Unicode NFKC, every run of
whitespace as one space, no leading or trailing whitespace; case and
punctuation are kept. ``deduplicate(rows)`` keeps the first row of each
normalised question and says how many it dropped.
"""

from __future__ import annotations

import csv
import json
import math
import re
import tempfile
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "Columns", "DataFileError", "Row", "read_rows", "read_table", "text_cell", "row_where", "normalise", "deduplicate",
    "FORMATS",
]

FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
_WHITESPACE = re.compile(r"\s+")


class DataFileError(ValueError):
    """A data file that cannot be used, with the file, row and column in the message."""


@dataclass(frozen=True)
class Columns:
    """Which column holds what (the defaults follow the common Hugging Face names)."""

    question: str = "question"
    answer: str = "answer"
    domain: str = "domain"
    system: str = "system"
    metadata: str = "metadata"


@dataclass(frozen=True)
class Row:
    """One question of a file, with its label when the file has one."""

    question: str
    answer: str | None = None
    domain: str | None = None
    system: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict, hash=False, compare=False)
    where: str = ""  # "file, row N": for messages


def normalise(text: str) -> str:
    """The form in which questions are compared (see module docstring)."""
    return _WHITESPACE.sub(" ", unicodedata.normalize("NFKC", text)).strip()


def deduplicate(rows: Iterable[Row]) -> tuple[list[Row], int]:
    """The first row of each normalised question, and how many rows were dropped."""
    seen: set[str] = set()
    kept: list[Row] = []
    dropped = 0
    for row in rows:
        key = normalise(row.question)
        if key in seen:
            dropped += 1
            continue
        seen.add(key)
        kept.append(row)
    return kept, dropped


def read_rows(path: Path | str, columns: Columns = Columns(), labelled: bool = False) -> list[Row]:
    """Every row of the file or folder at ``path`` (see module docstring)."""
    path = Path(path)
    table = read_table(path)
    names = list(table.column_names)
    question = columns.question
    if question not in names and question == Columns.question and "prompt" in names:
        question = "prompt"
    if question not in names:
        also = " (nor 'prompt')" if columns.question == Columns.question else ""
        raise DataFileError(f"{path}: no question column {columns.question!r}{also}; its columns are {names}")
    if labelled and columns.answer not in names:
        raise DataFileError(f"{path}: no answer column {columns.answer!r}; its columns are {names}")
    rows = []
    for index, record in enumerate(table, start=1):
        where = row_where(path, index)
        text = text_cell(record.get(question))
        if not text:
            raise DataFileError(f"{where}: column {question!r} is empty; every row needs a question")
        answer = text_cell(record.get(columns.answer)) if columns.answer in names else None
        if labelled and not answer:
            raise DataFileError(f"{where}: column {columns.answer!r} is empty; every labelled row needs an answer")
        rows.append(Row(
            question=text,
            answer=answer or None,
            domain=text_cell(record.get(columns.domain)) or None,
            system=text_cell(record.get(columns.system)) or None,
            metadata=_metadata(record.get(columns.metadata), where, columns.metadata),
            where=where,
        ))
    return rows


def read_table(path: Path):
    """The file or folder as a `datasets.Dataset`, read into memory (any columns; errors as ``read_rows``)."""
    path = Path(path)
    if not path.exists():
        raise DataFileError(f"{path}: no such file or folder")
    import datasets

    datasets.disable_progress_bars()
    datasets.config.HF_DATASETS_OFFLINE = True  # a data file never makes the library reach the network
    if path.is_dir():
        try:
            loaded = datasets.load_from_disk(str(path), keep_in_memory=True)
        except (FileNotFoundError, ValueError, OSError) as err:
            raise DataFileError(f"{path}: not a folder saved by `datasets` (save_to_disk): {err}") from None
        if isinstance(loaded, datasets.DatasetDict):
            splits = list(loaded)
            if "train" not in loaded and len(splits) != 1:
                raise DataFileError(f"{path}: a DatasetDict with splits {splits}: keep one, or name one 'train'")
            loaded = loaded["train"] if "train" in loaded else loaded[splits[0]]
        return loaded
    kind = FORMATS.get(path.suffix.lower())
    if kind == "json" and path.is_file() and not path.read_bytes().strip():
        raise DataFileError(f"{path}: empty: no rows")
    if kind is None:
        raise DataFileError(
            f"{path}: unknown format {path.suffix!r}; expected one of {sorted(FORMATS)} or a `datasets` folder"
        )
    options: dict[str, Any] = {}
    if kind == "csv":
        options["features"] = datasets.Features({name: datasets.Value("string") for name in _csv_header(path)})
    with tempfile.TemporaryDirectory(prefix="fedgrpo-data-") as cache:
        try:
            return datasets.load_dataset(
                kind, data_files=str(path), split="train", cache_dir=cache, keep_in_memory=True, **options
            )
        except Exception as err:  # the library raises many kinds; all mean "this file cannot be read"
            raise DataFileError(f"{path}: cannot read it as {kind}: {_first_bad_line(path, kind) or err}") from None


def _csv_header(path: Path) -> list[str]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            header = next(csv.reader(f), [])
    except (OSError, UnicodeDecodeError) as err:
        raise DataFileError(f"{path}: cannot read it as csv: {err}") from None
    if not header:
        raise DataFileError(f"{path}: empty; a CSV file starts with a header row naming its columns")
    return header


def _first_bad_line(path: Path, kind: str) -> str:
    """For JSON Lines, which line is not a JSON object (the library does not say)."""
    if kind != "json" or path.suffix.lower() != ".jsonl":
        return ""
    try:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    value = json.loads(line)
                except json.JSONDecodeError as err:
                    return f"line {number} is not JSON ({err.msg})"
                if not isinstance(value, dict):
                    return f"line {number} is a JSON {type(value).__name__}, expected an object"
    except (OSError, UnicodeDecodeError) as err:
        return str(err)
    return ""


def row_where(path: Path, index: int) -> str:
    """How a message names data row ``index`` (1-based) of ``path``."""
    return f"{path}, row {index}" + (f" (line {index})" if path.suffix.lower() == ".jsonl" else "")


def text_cell(value: Any) -> str:
    """A cell as text: strings as they are, numbers in decimal, empty cells as ''."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, (int, str)):
        return str(value).strip()
    return json.dumps(value, ensure_ascii=False)


def _metadata(value: Any, where: str, column: str) -> dict[str, Any]:
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise DataFileError(f"{where}: column {column!r} is not a JSON object ({err.msg})") from None
    if not isinstance(value, Mapping):
        raise DataFileError(f"{where}: column {column!r} is a {type(value).__name__}, expected a JSON object")
    return dict(value)

