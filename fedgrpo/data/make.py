"""Built-in reasoning-gym domains written as data files (`fedgrpo datasets make`).

Contract
--------
``make_rows(domain, size, seed)`` returns ``size`` labelled rows of a
built-in domain (``fedgrpo tasks`` lists them), in the order
:func:`fedgrpo.tasks.build_questions` generates them: ``question``,
``answer``, ``domain`` and ``metadata`` (the reasoning-gym entry's metadata
as a JSON object string, which the ``reasoning-gym`` checker needs).
``write_rows(rows, path, labelled)`` writes them as JSON Lines, CSV or
Parquet (by the suffix) through the `datasets` library; without
``labelled`` only ``question`` and ``domain`` are written: the server's
unlabelled copy. :func:`fedgrpo.data.files.read_rows` reads either back.
"""

from __future__ import annotations

import json
from pathlib import Path

from fedgrpo.tasks import build_questions

from .files import FORMATS, DataFileError

__all__ = ["make_rows", "write_rows"]


def make_rows(domain: str, size: int, seed: int = 0) -> list[dict[str, str]]:
    """``size`` labelled rows of built-in ``domain`` drawn with ``seed``."""
    return [
        {
            "question": q.text,
            "answer": q.answer,
            "domain": domain,
            "metadata": json.dumps(q.entry.get("metadata", {}), sort_keys=True, default=str),
        }
        for q in build_questions(domain, seed, size)
    ]


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
