"""The dataset RPCs of the public API: ImportDataset, ListDatasets, GetDataset, DeleteDataset.

``import_dataset(library, requests, context, max_rows, max_chars)`` reads an
ImportDataset stream: the first message names the dataset (1-64 letters,
digits, '_', '-', '.'; INVALID_ARGUMENT otherwise, ALREADY_EXISTS when taken)
and may set its instruction and system prompt; every message may carry rows.
Each row needs a question of at most ``max_chars`` characters
(``rows[i].question``), an optional domain named like a dataset, and an
optional system prompt; more than ``max_rows`` rows is RESOURCE_EXHAUSTED
(``rows``), a stream without rows INVALID_ARGUMENT. Nothing is stored unless
the whole stream is valid. ``delete_dataset`` refuses (FAILED_PRECONDITION) a
dataset given at start or named by a queued or running run; unknown names are
NOT_FOUND. ``dataset_message`` describes one for the API.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc

from fedgrpo import serving
from fedgrpo.data.files import Row
from fedgrpo.settings import NAME  # the one rule for names of members, datasets and domains
from fedgrpo.v1 import orchestrator_pb2 as pb

from .datasets import DatasetExists, DatasetLibrary
from .runs import RunStore

MAX_PROMPT_CHARS = 4096  # instruction and system prompts


def dataset_message(library: DatasetLibrary, name: str) -> pb.Dataset:
    dataset = library.datasets[name]
    return pb.Dataset(
        name=name, questions=len(dataset), repeated_rows=dataset.repeated, source=library.sources[name],
        domains=[pb.DatasetDomain(domain=d, questions=len(dataset.by_domain[d])) for d in dataset.domains],
        instruction=dataset.prompt_format.instruction, system=dataset.prompt_format.system or "",
    )


def _named(context: grpc.ServicerContext, name: str, field: str = "name") -> str:
    if not NAME.fullmatch(name):
        serving.invalid(context, field, f"got {name[:80]!r}, expected 1-64 letters, digits, '_', '-', '.'")
    return name


def import_dataset(
    library: DatasetLibrary, requests: Iterable[pb.ImportDatasetRequest], context: grpc.ServicerContext,
    max_rows: int, max_chars: int,
) -> pb.Dataset:
    name, instruction, system = None, "", ""
    rows: list[Row] = []
    for index, message in enumerate(requests):
        if index == 0:
            name = _named(context, message.name)
            instruction, system = message.instruction, message.system
            for field, text in (("instruction", instruction), ("system", system)):
                if len(text) > MAX_PROMPT_CHARS:
                    serving.invalid(context, field, f"{len(text)} characters, at most {MAX_PROMPT_CHARS}")
        elif message.name or message.instruction or message.system:
            serving.invalid(context, "name", "name, instruction and system belong in the first message only")
        for row in message.rows:
            at = f"rows[{len(rows)}]"
            if len(rows) >= max_rows:
                serving.refuse(context, grpc.StatusCode.RESOURCE_EXHAUSTED,
                               f"rows: more than {max_rows} rows (--max-dataset-rows); nothing was stored",
                               reason="TOO_MANY_ROWS", field="rows")
            if not row.question.strip():
                serving.invalid(context, f"{at}.question", "empty; every row needs a question")
            if len(row.question) > max_chars:
                serving.invalid(context, f"{at}.question",
                                f"{len(row.question)} characters, at most {max_chars} (--max-dataset-question-chars)")
            if row.domain:
                _named(context, row.domain, f"{at}.domain")
            if len(row.system) > MAX_PROMPT_CHARS:
                serving.invalid(context, f"{at}.system", f"{len(row.system)} characters, at most {MAX_PROMPT_CHARS}")
            rows.append(Row(row.question, domain=row.domain or None, system=row.system or None, where=at))
    if name is None:
        serving.invalid(context, "name", "the stream carried no message")
    if not rows:
        serving.invalid(context, "rows", "no rows: a dataset needs at least one question")
    try:
        library.add(name, rows, instruction, system or None)
    except DatasetExists as err:
        serving.refuse(context, grpc.StatusCode.ALREADY_EXISTS, f"name: {err}", field="name")
    return dataset_message(library, name)


def get_dataset(library: DatasetLibrary, name: str, context: grpc.ServicerContext) -> pb.Dataset:
    _named(context, name)
    if name not in library.datasets:
        serving.not_found(context, f"name {name!r}: no such dataset; registered: {sorted(library.datasets)}")
    return dataset_message(library, name)


def delete_dataset(
    library: DatasetLibrary, store: RunStore, name: str, context: grpc.ServicerContext
) -> pb.DeleteDatasetResponse:
    get_dataset(library, name, context)
    if library.sources[name] != "imported":
        serving.failed_precondition(context, f"dataset {name!r} was given at start (--dataset); remove the flag")
    users = [r.run_id for r in store.list()
             if r.spec.dataset == name and r.state in (pb.RUN_STATE_QUEUED, pb.RUN_STATE_RUNNING)]
    if users:
        serving.failed_precondition(context, f"dataset {name!r} is in use by run(s) {users}; cancel them first")
    library.delete(name)
    return pb.DeleteDatasetResponse()
