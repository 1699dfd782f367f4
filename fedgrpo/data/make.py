"""Built-in reasoning-gym domains written as data files (`fedgrpo datasets make`).

Contract
--------
``make_rows(domain, size, seed, exclude)`` returns ``size`` labelled rows of
a built-in domain (``fedgrpo tasks`` lists them): ``question``, ``answer``,
``domain`` and ``metadata`` (the reasoning-gym entry's metadata as a JSON
object string, which the ``reasoning-gym`` checker needs). Without
``exclude`` they are the first ``size`` items that
:func:`fedgrpo.tasks.build_questions` generates with ``seed``, repeats
included (item i depends only on the seed and i, so a larger size extends a
smaller one and two files made with the same seed agree on their common
part). With ``exclude`` (normalised question texts, see
:func:`fedgrpo.data.files.normalise`) they are the first ``size`` *new*
questions of that stream: none excluded, none repeated (a held-out set).
``ValueError`` names the domain when its question space cannot supply them
within ``SEARCH_FACTOR`` times ``size`` items.

``make_file(domains, size, out, seed, labelled, exclude)`` writes ``size``
rows of each domain, domain after domain, to ``out`` and returns the row
count; ``exclude`` names files (any format :func:`read_rows` reads) whose
questions are left out. ``write_rows(rows, path, labelled)`` writes rows as
JSON Lines, CSV or Parquet (by the suffix) through the `datasets` library;
without ``labelled`` only ``question`` and ``domain`` are written: the
server's unlabelled copy. :func:`fedgrpo.data.files.read_rows` reads either
back.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from fedgrpo.tasks import build_questions

from .files import FORMATS, DataFileError, normalise, read_rows

__all__ = ["SEARCH_FACTOR", "make_rows", "make_file", "write_rows"]

SEARCH_FACTOR = 20  # items of a domain's stream searched per wanted question when some are excluded


def _row(domain: str, question) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {
        "question": question.text,
        "answer": question.answer,
        "domain": domain,
        "metadata": json.dumps(question.entry.get("metadata", {}), sort_keys=True, default=str),
    }


def make_rows(domain: str, size: int, seed: int = 0, exclude: Iterable[str] = ()) -> list[dict[str, str]]:
    """``size`` labelled rows of built-in ``domain`` drawn with ``seed`` (see the module docstring)."""
    taken = set(exclude)
    if not taken:
        return [_row(domain, q) for q in build_questions(domain, seed, size)]
    stream = build_questions(domain, seed, size * SEARCH_FACTOR)
    rows = []
    for question in stream:
        key = normalise(question.text)
        if key in taken:
            continue
        taken.add(key)
        rows.append(_row(domain, question))
        if len(rows) == size:
            return rows
    raise ValueError(
        f"{domain}: only {len(rows)} new questions among the {len(stream)} drawn with seed {seed}, fewer than the "
        f"{size} asked for: its question space is too small beside the excluded files (use a larger domain, "
        "e.g. add2, sub2, chain3, or a smaller --size)"
    )


def make_file(
    domains: Sequence[str], size: int, out: Path, seed: int = 0, labelled: bool = True,
    exclude: Sequence[Path] = (),
) -> int:
    """Write ``size`` rows of each of ``domains`` to ``out``; questions of the ``exclude`` files left out."""
    if size < 1:
        raise ValueError(f"size {size}: give at least 1 question")
    if not domains:
        raise ValueError("domains: name at least one built-in domain")
    excluded = {normalise(row.question) for file in exclude for row in read_rows(file)}
    rows = [row for domain in domains for row in make_rows(domain, size, seed, excluded)]
    write_rows(rows, out, labelled)
    return len(rows)


def write_rows(rows: list[dict[str, str]], path: Path, labelled: bool = True) -> Path:
    """Write ``rows`` to ``path`` (format by suffix); only question and domain unless ``labelled``."""
    import datasets

    path = Path(path)
    kind = FORMATS.get(path.suffix.lower())
    if kind is None or path.suffix.lower() == ".json":
        raise DataFileError(f"{path}: write .jsonl, .csv or .parquet")
    keep = ["question", "answer", "domain", "metadata"] if labelled else ["question", "domain"]
    table = datasets.Dataset.from_dict({key: [row[key] for row in rows] for key in keep})
    path.parent.mkdir(parents=True, exist_ok=True)
    datasets.disable_progress_bars()
    if kind == "json":
        table.to_json(str(path), lines=True, force_ascii=False)
    elif kind == "csv":
        table.to_csv(str(path), index=False)
    else:
        table.to_parquet(str(path))
    return path
