"""Datasets through the public API, against a real orchestrator: import a stream of rows, list, get,
train a run on it, survive a restart, refuse deletion while a run uses it; every bad stream is refused
with the field named and nothing stored."""

from __future__ import annotations

import json

import grpc
import pytest

from fedgrpo.v1 import orchestrator_pb2 as pb

from .conftest import START_TIMEOUT, federation
from .test_join import run_to_end, steps_of

pytestmark = pytest.mark.integration

CODES = {"asthma": "J45", "GERD": "K21", "migraine": "G43", "gout": "M10"}


def rows(names=CODES):
    return [pb.DatasetRow(question=f"Which ICD-10 code is {n}?", domain="icd") for n in names]


def stream(name, batches, **first):
    yield pb.ImportDatasetRequest(name=name, rows=batches[0], **first)
    for batch in batches[1:]:
        yield pb.ImportDatasetRequest(rows=batch)


def refused(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value


@pytest.fixture(scope="module")
def clinic(tmp_path_factory, model_cache):
    """An orchestrator (at most 6 rows per import) and two clients holding the codes; each test leaves
    no dataset behind."""
    tmp_path = tmp_path_factory.mktemp("clinic")
    org = tmp_path / "org"
    org.mkdir()
    labels = org / "labels.jsonl"
    labels.write_text("".join(json.dumps({"question": f"Which ICD-10 code is {n}?", "answer": c, "domain": "icd"})
                              + "\n" for n, c in CODES.items()))
    own = ["--labels", str(labels), "--checker", "exact"]
    with federation(
        tmp_path, model_cache, clients=[("", own), ("", own)],
        orchestrator_args=["--no-confidence-graph", "--max-dataset-rows", "6"],
    ) as (stub, fed, services):
        yield stub, fed, services, tmp_path


def test_import_list_get_train_restart_and_delete(clinic):
    stub, fed, services, tmp_path = clinic
    imported = stub.ImportDataset(stream("clinic", [rows(["asthma", "GERD"]), rows(["migraine", "gout", "asthma"])],
                                         instruction="Answer with the code."))
    assert (imported.name, imported.questions, imported.repeated_rows, imported.source) == ("clinic", 4, 1, "imported")
    assert [(d.domain, d.questions) for d in imported.domains] == [("icd", 4)]
    assert imported.instruction == "Answer with the code."
    assert [d.name for d in stub.ListDatasets(pb.ListDatasetsRequest()).datasets] == ["clinic"]
    assert stub.GetDataset(pb.GetDatasetRequest(name="clinic")) == imported

    run = stub.CreateRun(pb.CreateRunRequest(spec=pb.RunSpec(
        dataset="clinic", steps=2, questions_per_step=2, candidates_per_question=4, experts_per_question=2,
        max_tokens=6,
    )))
    assert list(run.spec.tasks) == ["icd"]
    run = run_to_end(stub, run.run_id)
    assert run.state == pb.RUN_STATE_SUCCEEDED, run.error
    assert [s["rewards_by_client"] for s in steps_of(run)] == [{"client-0": 8, "client-1": 8}] * 2

    fed.restart(services["orchestrator"])  # an imported dataset outlives a restart
    fed.wait_healthy(services["orchestrator"], START_TIMEOUT)
    assert stub.GetDataset(pb.GetDatasetRequest(name="clinic"), wait_for_ready=True) == imported

    queued = stub.CreateRun(pb.CreateRunRequest(spec=pb.RunSpec(
        dataset="clinic", steps=50, questions_per_step=1, candidates_per_question=2, experts_per_question=1,
        max_tokens=4,
    )))
    err = refused(lambda: stub.DeleteDataset(pb.DeleteDatasetRequest(name="clinic")))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and queued.run_id in err.details()
    stub.CancelRun(pb.CancelRunRequest(run_id=queued.run_id))
    run_to_end(stub, queued.run_id)
    stub.DeleteDataset(pb.DeleteDatasetRequest(name="clinic"))
    assert refused(lambda: stub.GetDataset(pb.GetDatasetRequest(name="clinic"))).code() == grpc.StatusCode.NOT_FOUND
    assert not (tmp_path / "runs" / "datasets" / "clinic.jsonl").exists()
    err = refused(lambda: stub.CreateRun(pb.CreateRunRequest(spec=pb.RunSpec(dataset="clinic"))))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "spec.dataset" in err.details()


@pytest.mark.parametrize(
    "messages, code, details",
    [
        (lambda: stream("bad name", [rows()]), grpc.StatusCode.INVALID_ARGUMENT, "name: got 'bad name'"),
        (lambda: stream("empty", [[]]), grpc.StatusCode.INVALID_ARGUMENT, "rows: no rows"),
        (lambda: iter([]), grpc.StatusCode.INVALID_ARGUMENT, "name: the stream carried no message"),
        (lambda: stream("blank", [rows(["asthma"]) + [pb.DatasetRow(question="  ")]]),
         grpc.StatusCode.INVALID_ARGUMENT, "rows[1].question: empty"),
        (lambda: stream("long", [[pb.DatasetRow(question="x" * 8193)]]),
         grpc.StatusCode.INVALID_ARGUMENT, "rows[0].question: 8193 characters, at most 8192"),
        (lambda: stream("odd", [[pb.DatasetRow(question="q?", domain="icd codes")]]),
         grpc.StatusCode.INVALID_ARGUMENT, "rows[0].domain: got 'icd codes'"),
        (lambda: stream("big", [rows(), rows(), rows()]),
         grpc.StatusCode.RESOURCE_EXHAUSTED, "rows: more than 6 rows"),
        (lambda: iter([pb.ImportDatasetRequest(name="two", rows=rows()), pb.ImportDatasetRequest(name="three")]),
         grpc.StatusCode.INVALID_ARGUMENT, "name: name, instruction and system belong in the first message only"),
    ],
)
def test_a_bad_import_names_the_field_and_stores_nothing(clinic, messages, code, details):
    stub, _, _, tmp_path = clinic
    err = refused(lambda: stub.ImportDataset(messages()))
    assert err.code() == code and err.details().startswith(details), err.details()
    assert stub.ListDatasets(pb.ListDatasetsRequest()).datasets == []
    stored = tmp_path / "runs" / "datasets"
    assert not stored.exists() or not [p for p in stored.iterdir() if not p.name.startswith(".")]


def test_names_are_unique_and_unknown_ones_not_found(clinic):
    stub, _, _, _ = clinic
    stub.ImportDataset(stream("ok", [rows()]))
    err = refused(lambda: stub.ImportDataset(stream("ok", [rows()])))
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS and "a dataset named 'ok' exists (imported)" in err.details()
    err = refused(lambda: stub.GetDataset(pb.GetDatasetRequest(name="absent")))
    assert err.code() == grpc.StatusCode.NOT_FOUND and "registered: ['ok']" in err.details()
    err = refused(lambda: stub.DeleteDataset(pb.DeleteDatasetRequest(name="")))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and err.details().startswith("name:")
    stub.DeleteDataset(pb.DeleteDatasetRequest(name="ok"))
