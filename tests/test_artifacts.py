"""DownloadRunArtifacts' parts without a server (pure): which files a call sends, the chunks, their checks.

The orchestrator's half (``services.orchestrator.artifacts``) plans and chunks a run folder; the client
library's half (``fedgrpo.client.write_artifacts``) puts the chunks back together. The same round trip
over TLS with a real run is in tests/test_client_sdk.py.
"""

from __future__ import annotations

import hashlib
import os

import grpc
import pytest

from fedgrpo.client import CorruptedDownload, verify_file, write_artifacts
from fedgrpo.services.orchestrator.artifacts import (
    ArtifactError,
    ArtifactServer,
    check_run_id,
    chunk_size,
    chunks,
    open_beneath,
    plan,
    regular_files,
    selection,
)
from fedgrpo.services.orchestrator.runs import RunStore
from fedgrpo.v1 import orchestrator_pb2 as pb

ENDED = pb.Run(run_id="20250101-000000-abcdef", state=pb.RUN_STATE_SUCCEEDED)
RUNNING = pb.Run(run_id="20250101-000000-abcdef", state=pb.RUN_STATE_RUNNING)


@pytest.fixture
def run_dir(tmp_path):
    """A finished run's folder, with what a download must leave out beside it."""
    d = tmp_path / "runs" / ENDED.run_id
    (d / "model").mkdir(parents=True)
    (d / "model" / "config.json").write_text('{"hidden": 128}')
    (d / "model" / "model.safetensors").write_bytes(os.urandom(3 * 1000 + 7))
    (d / "model" / "empty.txt").write_bytes(b"")
    (d / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2}\n')
    (d / "run.json").write_text("{}")
    (d / "model.tmp").mkdir()  # a copy in progress
    (d / "model.tmp" / "config.json").write_text("{")
    (d / "run.json.tmp").write_text("{")
    (d / ".summary.json.x1.tmp").write_text("{")
    secret = tmp_path / "secret.txt"
    secret.write_text("not the run's")
    (d / "leak.txt").symlink_to(secret)
    (d / "elsewhere").symlink_to(tmp_path, target_is_directory=True)
    return d


def opened(d):
    return os.open(d, os.O_RDONLY | os.O_DIRECTORY)


def refusal(call) -> ArtifactError:
    with pytest.raises(ArtifactError) as err:
        call()
    return err.value


def test_only_the_regular_files_of_the_run_folder_are_listed(run_dir):
    root = opened(run_dir)
    try:
        assert regular_files(root) == ["metrics.jsonl", "model/config.json", "model/empty.txt",
                                       "model/model.safetensors", "run.json"]
        with pytest.raises(OSError):  # a link is never opened, even when named
            open_beneath(root, "leak.txt")
        with pytest.raises(OSError):
            open_beneath(root, "elsewhere/secret.txt")
    finally:
        os.close(root)


@pytest.mark.parametrize("paths, field", [
    (["../x"], "paths[0]"), (["model/", "/etc/passwd"], "paths[1]"), (["model/../../x"], "paths[0]"),
    ([""], "paths[0]"), (["./run.json"], "paths[0]"), (["model//config.json"], "paths[0]"),
    (["a\\..\\b"], "paths[0]"), (["x" * 1025], "paths[0]"), (["run.json"] * 65, "paths"),
])
def test_a_path_that_could_leave_the_run_folder_is_invalid_naming_it(paths, field):
    err = refusal(lambda: selection(paths))
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT and err.message.startswith(f"{field}: ")


@pytest.mark.parametrize("run_id", ["", "../runs", "a/b", ".", "..", "x" * 129, "run\x00"])
def test_a_malformed_run_id_is_invalid(run_id):
    err = refusal(lambda: check_run_id(run_id))
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT and err.message.startswith("run_id: ")


def test_paths_select_files_and_folders_and_one_matching_nothing_is_not_found(run_dir):
    root = opened(run_dir)
    try:
        assert [p.path for p in plan(root, ENDED, selection(["model/"]), 10**9)] == \
            ["model/config.json", "model/empty.txt", "model/model.safetensors"]
        assert [p.path for p in plan(root, ENDED, selection(["model", "run.json"]), 10**9)] == \
            ["model/config.json", "model/empty.txt", "model/model.safetensors", "run.json"]
        err = refusal(lambda: plan(root, ENDED, selection(["run.json", "mod"]), 10**9))  # no prefix of a name
        assert err.code == grpc.StatusCode.NOT_FOUND and err.message.startswith("paths[1]: 'mod' matches no file")
        assert "model/" in err.message  # what the run holds
        err = refusal(lambda: plan(root, ENDED, [], 3000))
        assert err.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "--max-download-bytes" in err.message
    finally:
        os.close(root)


def test_a_running_run_sends_its_run_record_and_complete_metric_lines_only(run_dir):
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "rew')  # a line being appended
    root = opened(run_dir)
    try:
        planned = plan(root, RUNNING, [], 10**9)
        assert [(p.path, p.data) for p in planned] == [
            ("metrics.jsonl", b'{"step": 1}\n{"step": 2}\n'), ("run.json", b"{}")]
        err = refusal(lambda: plan(root, RUNNING, selection(["metrics.jsonl", "model/"]), 10**9))
        assert err.code == grpc.StatusCode.FAILED_PRECONDITION and err.message.startswith("paths[1]: 'model/'")
        assert "running" in err.message
    finally:
        os.close(root)


def test_chunks_rebuild_every_file_byte_for_byte_and_a_corrupted_one_is_not_written(run_dir, tmp_path):
    root = opened(run_dir)
    try:
        sent = list(chunks(root, plan(root, ENDED, [], 10**9), chunk_bytes=1000, max_bytes=10**9))
    finally:
        os.close(root)
    assert sent[0].total_files == 5 and sent[0].total_bytes == sum(
        (run_dir / p).stat().st_size for p in ("metrics.jsonl", "run.json", "model/config.json",
                                                "model/model.safetensors"))
    assert all(len(c.data) <= 1000 for c in sent) and [c.offset for c in sent if c.path.endswith("safetensors")] == \
        [0, 1000, 2000, 3000]
    out = tmp_path / "out"
    written = write_artifacts(sent, out)
    assert [p.relative_to(out).as_posix() for p in written] == [c.path for c in sent if c.last]
    for p in written:
        assert hashlib.sha256(p.read_bytes()).digest() == \
            hashlib.sha256((run_dir / p.relative_to(out)).read_bytes()).digest()

    corrupted = [pb.ArtifactChunk.FromString(c.SerializeToString()) for c in sent]
    at = next(i for i, c in enumerate(corrupted) if c.path == "model/model.safetensors" and c.offset == 1000)
    corrupted[at].data = bytes([corrupted[at].data[0] ^ 1]) + corrupted[at].data[1:]  # one bit flipped on the way
    again = tmp_path / "again"
    with pytest.raises(CorruptedDownload) as err:
        write_artifacts(corrupted, again)
    assert err.value.field == "sha256" and err.value.path == "model/model.safetensors"
    assert err.value.code == grpc.StatusCode.DATA_LOSS
    # The files before it were verified and kept; the corrupted one and its temporary file are not there.
    assert sorted(p.relative_to(again).as_posix() for p in again.rglob("*") if p.is_file()) == \
        ["metrics.jsonl", "model/config.json", "model/empty.txt"]


def test_the_receiver_refuses_a_stream_that_does_not_add_up(tmp_path):
    whole = pb.ArtifactChunk(path="a.txt", data=b"abc", last=True, size=3, sha256=hashlib.sha256(b"abc").hexdigest())
    with pytest.raises(CorruptedDownload) as err:
        verify_file("a.txt", 3, hashlib.sha256(b"abd").hexdigest(), whole)  # a wrong checksum
    assert err.value.field == "sha256"
    cases = {
        "size": [pb.ArtifactChunk(path="a.txt", data=b"ab", last=True, size=3, sha256=whole.sha256)],
        "offset": [pb.ArtifactChunk(path="a.txt", data=b"a"), pb.ArtifactChunk(path="a.txt", offset=2, data=b"bc")],
        "last": [pb.ArtifactChunk(path="a.txt", data=b"a")],
        "path": [pb.ArtifactChunk(path="../a.txt", data=b"abc", last=True, size=3, sha256=whole.sha256)],
    }
    for field, stream in cases.items():
        with pytest.raises(CorruptedDownload) as err:
            write_artifacts(stream, tmp_path / field)
        assert err.value.field == field, field
        assert not [p for p in (tmp_path / field).rglob("*") if p.is_file()] and not (tmp_path / "a.txt").exists()


def test_a_chunk_fits_the_port_message_bound():
    assert chunk_size(16 * 1024 * 1024) == 1024 * 1024 and chunk_size(1024) == 512


class Aborted(Exception):
    pass


class Context:
    """What the servicer uses of a gRPC call's context: abort raises, as gRPC's does."""

    def abort(self, code, details):
        raise Aborted(code, details)

    def is_active(self):
        return True

    def peer(self):
        return "ipv4:127.0.0.1:1"


def test_downloads_beyond_the_bound_are_refused_at_once_and_a_finished_one_frees_its_slot(tmp_path):
    store = RunStore(tmp_path / "runs")
    run = store.create(pb.RunSpec(tasks=["add1"]))
    store.update(run.run_id, state=pb.RUN_STATE_SUCCEEDED)
    server = ArtifactServer(store, max_bytes=10**6, max_concurrent=1, chunk_bytes=100)
    request = pb.DownloadRunArtifactsRequest(run_id=run.run_id)
    streaming = server.download(request, Context())
    assert next(streaming).path == "run.json"  # holds the one slot while it streams
    with pytest.raises(Aborted) as err:
        next(server.download(request, Context()))
    assert err.value.args[0] == grpc.StatusCode.RESOURCE_EXHAUSTED and "--max-concurrent-downloads" in err.value.args[1]
    list(streaming)  # ends: the slot is free again
    assert b"".join(c.data for c in server.download(request, Context())) == \
        (tmp_path / "runs" / run.run_id / "run.json").read_bytes()
    refused = server.download(pb.DownloadRunArtifactsRequest(run_id=run.run_id, paths=["../x"]), Context())
    with pytest.raises(Aborted) as err:
        next(refused)
    assert err.value.args[0] == grpc.StatusCode.INVALID_ARGUMENT and err.value.args[1].startswith("paths[0]: ")
    assert next(server.download(request, Context())).path == "run.json"  # a refused call held no slot
