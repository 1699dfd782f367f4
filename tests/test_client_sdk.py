"""The client library and its commands against a real orchestrator over TLS with an API token.

An outside system's path: it holds the CA certificate and a token, nothing
else (no client certificate); it creates a run (a retry after a lost reply
returns the same run), follows it, gets typed errors naming the field, lists
runs and clients, reads the graph, downloads a run's files (byte for byte,
checked; refusals naming the field; a corrupted chunk refused); the asyncio
client does the same; a followed run's steps land in TensorBoard event files
with the values the watch delivered; and the `fedgrpo runs|clients|graph`
commands do the same from a shell with FEDGRPO_* variables. A generic gRPC
client (plain grpcio and grpcio-status, no fedgrpo code) reads a refusal's
google.rpc details; the SDK takes the spec's choices by readable name.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from rich.console import Console
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from fedgrpo.certs import init_federation
from fedgrpo.client import (
    AlreadyExists,
    AsyncClient,
    Client,
    ClientSettings,
    CorruptedDownload,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unauthenticated,
    write_artifacts,
)
from fedgrpo.progress import TAG_PREFIX, follow_run, step_scalars
from fedgrpo.v1 import common_pb2
from fedgrpo.v1 import orchestrator_pb2 as pb
from fedgrpo.v1 import orchestrator_pb2_grpc as pb_grpc
from tests.conftest import federation

pytestmark = pytest.mark.integration

SPEC = {"tasks": ["add1"], "steps": 2, "questions_per_step": 2, "candidates_per_question": 4,
        "experts_per_question": 1, "max_tokens": 8, "expert_selection": "domain"}
# --max-download-bytes of the orchestrator: a tiny-policy run's folder is ~1.4 MB.
DOWNLOAD_LIMIT = 8 * 1024 * 1024


@pytest.fixture(scope="module")
def orchestrator(tmp_path_factory, model_cache):
    tmp = tmp_path_factory.mktemp("sdk")
    certs = tmp / "certs"
    init_federation(certs, clients=["client-0"], hosts=["127.0.0.1", "localhost"])
    with federation(tmp, model_cache, clients=[("add1", [])], certs=certs,
                    orchestrator_args=["--auxiliary-size", "10", "--auxiliary-domains", "add1",
                                       "--max-download-bytes", str(DOWNLOAD_LIMIT)]) as (_, _, services):
        yield services["orchestrator"].address, certs


def test_create_watch_and_read_a_run_with_the_ca_and_a_token_only(orchestrator):
    address, certs = orchestrator
    settings = ClientSettings(address=address, ca=certs / "ca.crt", token_file=certs / "api-token")
    with Client.from_settings(settings) as client:
        run = client.create_run(SPEC, request_id="sdk-first")
        assert client.create_run(SPEC, request_id="sdk-first").run_id == run.run_id  # a retry: the same run
        seen = []
        final, steps = client.wait(run.run_id, on_step=lambda m: seen.append(m.step))
        assert final.state == pb.RUN_STATE_SUCCEEDED, final.error
        assert [m.step for m in steps] == seen == [1, 2]
        # A watch resumed after step 1 gets step 2 and the end, nothing before.
        resumed = list(client.watch(run.run_id, after_step=1))
        assert [e.step.step for e in resumed if e.HasField("step")] == [2]
        assert resumed[-1].run.state == pb.RUN_STATE_SUCCEEDED
        assert run.run_id in {r.run_id for r in client.list_runs()}
        assert client.get_run(run.run_id).steps_completed == 2
        assert [c.name for c in client.list_clients()] == ["client-0"]
        assert {c.client for c in client.confidence_graph().competences} == {"client-0"}
        assert client.generate(["1+1="], max_tokens=2).policy.version == final.policy.version

        with pytest.raises(AlreadyExists) as err:  # the same request_id for another spec
            client.create_run({**SPEC, "steps": 3}, request_id="sdk-first")
        assert (err.value.field, err.value.reason) == ("request_id", "REQUEST_ID_REUSED")
        with pytest.raises(InvalidArgument) as err:
            client.create_run({**SPEC, "candidates_per_question": 1})
        assert err.value.field == "spec.candidates_per_question" and "greater than or equal to 2" in err.value.message
        with pytest.raises(NotFound):
            client.get_run("19990101-000000-000000")
    with Client(address, ca=certs / "ca.crt", token="wrong-token") as stranger, pytest.raises(Unauthenticated) as err:
        stranger.list_runs()
    assert err.value.reason == "UNAUTHENTICATED"


def refusal_details(call) -> tuple[int, str, list, list]:
    """(code, message, ErrorInfos, BadRequest violations) of a refused call, read as any gRPC client would."""
    status = rpc_status.from_call(call)
    infos, violations = [], []
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            infos.append(error_details_pb2.ErrorInfo())
            detail.Unpack(infos[-1])
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations.extend((v.field, v.description) for v in bad.field_violations)
    return status.code, status.message, [(i.reason, i.domain) for i in infos], violations


def test_a_generic_grpc_client_reads_the_field_at_fault_from_the_details(orchestrator):
    address, certs = orchestrator
    channel = grpc.secure_channel(address, grpc.ssl_channel_credentials((certs / "ca.crt").read_bytes()))
    stub = pb_grpc.OrchestratorServiceStub(channel)
    token = [("authorization", f"Bearer {(certs / 'api-token').read_text().strip()}")]
    cases = [
        (pb.RunSpec(tasks=["add1"], candidates_per_question=1), "spec.candidates_per_question",
         "Input should be greater than or equal to 2 (got 1)"),
        # an enum number this orchestrator does not know (a newer or broken client)
        (pb.RunSpec(tasks=["add1"], loss_type=42), "spec.loss_type",
         "got 42, not a LossType value; expected one of LOSS_TYPE_GRPO, LOSS_TYPE_BNPO, LOSS_TYPE_DR_GRPO, "
         "LOSS_TYPE_DAPO (or unset)"),
    ]
    with channel:
        for spec, field, problem in cases:
            with pytest.raises(grpc.RpcError) as err:
                stub.CreateRun(pb.CreateRunRequest(spec=spec), metadata=token, timeout=30)
            code, message, infos, violations = refusal_details(err.value)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
            assert message == err.value.details() == f"{field}: {problem}"  # the text stays as readable as before
            assert violations == [(field, problem)]
            assert infos == [("INVALID_FIELD", "fedgrpo.v1")]
        with pytest.raises(grpc.RpcError) as err:  # the token check (the Guard) says why too
            stub.ListRuns(pb.ListRunsRequest(), timeout=30)
        assert refusal_details(err.value)[2:] == ([("UNAUTHENTICATED", "fedgrpo.v1")], [])


def test_the_sdk_takes_readable_choice_names_and_reads_the_details(orchestrator):
    address, certs = orchestrator
    with Client(address, ca=certs / "ca.crt", token=(certs / "api-token").read_text().strip()) as client:
        run = client.create_run({**SPEC, "steps": 1, "loss_type": "dr_grpo", "zero_signal_groups": "drop"})
        client.cancel_run(run.run_id)  # only its echoed spec matters here
        for echoed in (run.spec, client.get_run(run.run_id).spec):
            assert (echoed.loss_type, echoed.zero_signal_groups, echoed.expert_selection) == (
                common_pb2.LOSS_TYPE_DR_GRPO, pb.ZERO_SIGNAL_GROUPS_DROP, pb.EXPERT_SELECTION_DOMAIN)
            assert echoed.reward_reading == pb.REWARD_READING_CONSENSUS  # defaults are echoed as enums too
            assert json_format.MessageToDict(echoed)["lossType"] == "LOSS_TYPE_DR_GRPO"
        with pytest.raises(InvalidArgument) as err:
            client.create_run({**SPEC, "reward_fusion": 9})
        assert (err.value.field, err.value.reason) == ("spec.reward_fusion", "INVALID_FIELD")
        assert err.value.message.startswith("got 9, not a RewardFusion value")
        assert [(v.field, v.description) for v in err.value.violations] == [("spec.reward_fusion", err.value.message)]
        with pytest.raises(InvalidArgument) as err:  # a name no value has never leaves the client
            client.create_run({**SPEC, "loss_type": "ppo"})
        assert err.value.field == "spec.loss_type" and "expected one of grpo, bnpo, dr_grpo, dapo" in err.value.message


def scalars_in(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series TensorBoard reads from the event files in ``logdir``: tag -> [(step, value)]."""
    events = EventAccumulator(str(logdir))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_a_followed_run_writes_one_tensorboard_scalar_per_metric_per_step(orchestrator, tmp_path):
    address, certs = orchestrator
    with Client(address, ca=certs / "ca.crt", token=(certs / "api-token").read_text().strip()) as client:
        run = client.create_run(SPEC)
        final, steps = follow_run(client, run, Console(file=io.StringIO()), logdir=tmp_path / "tb")
    assert final.state == pb.RUN_STATE_SUCCEEDED, final.error
    watched = [json_format.ParseDict(s, pb.StepMetrics()) for s in steps]
    assert [m.step for m in watched] == [1, 2]
    written = scalars_in(tmp_path / "tb")
    expected = {TAG_PREFIX + name for m in watched for name in step_scalars(m)}
    assert set(written) == expected and {"train/reward_mean", "train/loss", "train/step_seconds"} <= expected
    for m in watched:
        for name, value in step_scalars(m).items():  # TensorBoard keeps float32
            assert dict(written[TAG_PREFIX + name])[m.step] == pytest.approx(value, rel=1e-6, abs=1e-6), name
    assert all(len(series) == 2 for series in written.values())  # one per step, none twice


def test_the_asyncio_client_creates_once_watches_to_the_end_and_names_the_field(orchestrator):
    address, certs = orchestrator

    async def drive() -> None:
        settings = ClientSettings(address=address, ca=certs / "ca.crt", token_file=certs / "api-token")
        async with AsyncClient.from_settings(settings) as client:
            run = await client.create_run(SPEC, request_id="sdk-async")
            again = await client.create_run(SPEC, request_id="sdk-async")  # a retry: the same run
            assert again.run_id == run.run_id
            assert [r.run_id for r in await client.list_runs()].count(run.run_id) == 1
            events = [e async for e in client.watch(run.run_id)]
            assert [e.step.step for e in events if e.HasField("step")] == [1, 2]
            assert events[-1].run.state == pb.RUN_STATE_SUCCEEDED
            resumed = [e async for e in client.watch(run.run_id, after_step=1)]
            assert [e.step.step for e in resumed if e.HasField("step")] == [2]
            final, steps = await client.wait(run.run_id)
            assert final.state == pb.RUN_STATE_SUCCEEDED and [m.step for m in steps] == [1, 2]
            assert (await client.get_run(run.run_id)).steps_completed == 2
            assert [c.name for c in await client.list_clients()] == ["client-0"]
            assert {c.client for c in (await client.confidence_graph()).competences} == {"client-0"}
            assert (await client.generate(["1+1="], max_tokens=2)).policy.version == final.policy.version
            with pytest.raises(AlreadyExists) as err:
                await client.create_run({**SPEC, "steps": 3}, request_id="sdk-async")
            assert err.value.field == "request_id"
            with pytest.raises(InvalidArgument) as err:
                await client.create_run({**SPEC, "candidates_per_question": 1})
            assert err.value.field == "spec.candidates_per_question"
            with pytest.raises(NotFound):
                await client.cancel_run("19990101-000000-000000")
        async with AsyncClient(address, ca=certs / "ca.crt", token="wrong-token") as stranger:
            with pytest.raises(Unauthenticated):
                await stranger.list_runs()

    asyncio.run(drive())


def sha256s(folder: Path) -> dict[str, str]:
    """SHA-256 of every regular file under ``folder`` by relative path, temporary files (.name, *.tmp) left out."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in folder.rglob("*") if p.is_file() and not p.is_symlink()
            and not any(n.startswith(".") or n.endswith(".tmp") for n in p.relative_to(folder).parts)}


def test_download_brings_a_run_folder_back_byte_for_byte_and_refuses_what_it_must(orchestrator, tmp_path):
    address, certs = orchestrator
    settings = ClientSettings(address=address, ca=certs / "ca.crt", token_file=certs / "api-token")
    with Client.from_settings(settings) as client:
        # While a run trains (a tiny one takes ~0.5 s a step: this one is asked long before its end) its model/
        # is not final: refused; the run record and the metrics so far are sent.
        long = client.create_run({**SPEC, "steps": 1000})
        try:
            with pytest.raises(FailedPrecondition) as err:
                client.download(long.run_id, tmp_path / "early", ["model/"])
            assert err.value.message.startswith("paths[0]: 'model/'") and "can be downloaded" in err.value.message
            early = client.download(long.run_id, tmp_path / "early")
            assert "run.json" in [p.name for p in early] and {p.name for p in early} <= {"run.json", "metrics.jsonl"}
        finally:
            client.cancel_run(long.run_id)
        assert client.wait(long.run_id)[0].state == pb.RUN_STATE_CANCELLED
        with pytest.raises(NotFound):  # a cancelled run exported no policy
            client.download(long.run_id, tmp_path / "cancelled", ["model/"])

        run = client.create_run(SPEC)
        final, _ = client.wait(run.run_id)
        assert final.state == pb.RUN_STATE_SUCCEEDED, final.error

        run_dir = Path(final.artifacts_path)  # the orchestrator's folder (this test runs on its machine)
        on_server = sha256s(run_dir)
        assert {"metrics.jsonl", "run.json", "model/config.json", "model/model.safetensors",
                "confidence_graph.json"} <= set(on_server)
        seen: list[pb.ArtifactChunk] = []
        written = client.download(final.run_id, tmp_path / "all", on_chunk=seen.append)
        assert sha256s(tmp_path / "all") == on_server  # every file, byte for byte
        assert [p.relative_to(tmp_path / "all").as_posix() for p in written] == sorted(on_server)
        assert seen[0].total_files == len(on_server) and seen[0].total_bytes == sum(
            p.stat().st_size for p in written)
        assert all(len(c.data) <= 1024 * 1024 for c in seen) and sum(c.last for c in seen) == len(on_server)
        steps = [json.loads(line) for line in (tmp_path / "all" / "metrics.jsonl").read_text().splitlines()]
        assert [m["step"] for m in steps] == [1, 2]
        model = client.download(final.run_id, tmp_path / "model", ["model/"])
        assert {p.relative_to(tmp_path / "model").as_posix() for p in model} == \
            {k for k in on_server if k.startswith("model/")}

        with pytest.raises(NotFound) as err:
            client.download("19990101-000000-000000", tmp_path / "x")
        assert "run_id" in err.value.message
        with pytest.raises(InvalidArgument) as err:
            client.download(final.run_id, tmp_path / "x", ["../x"])
        assert err.value.field == "paths[0]"
        with pytest.raises(InvalidArgument) as err:
            client.download(final.run_id, tmp_path / "x", ["model/", "/etc/passwd"])
        assert err.value.field == "paths[1]"
        with pytest.raises(InvalidArgument) as err:
            client.download("../runs", tmp_path / "x")
        assert err.value.field == "run_id"
        with pytest.raises(NotFound) as err:
            client.download(final.run_id, tmp_path / "x", ["modle/"])
        assert err.value.message.startswith("paths[0]: 'modle/' matches no file")
        assert not (tmp_path / "x").exists() or not any((tmp_path / "x").iterdir())

        # A folder holding more than the orchestrator sends in one call: refused before any byte; a part of it
        # still comes.
        big = run_dir / "big.bin"
        with open(big, "wb") as f:
            f.truncate(DOWNLOAD_LIMIT)  # sparse: no disk used
        try:
            with pytest.raises(ResourceExhausted) as err:
                client.download(final.run_id, tmp_path / "big")
            assert "--max-download-bytes" in err.value.message and err.value.message.startswith("paths: ")
            assert not (tmp_path / "big").exists() or not any((tmp_path / "big").rglob("*"))
            assert [p.name for p in client.download(final.run_id, tmp_path / "big", ["metrics.jsonl"])] == \
                ["metrics.jsonl"]
        finally:
            big.unlink()

        # A chunk corrupted on the way: the SDK refuses the file and leaves what was there.
        chunks = list(client.stub.DownloadRunArtifacts(pb.DownloadRunArtifactsRequest(
            run_id=final.run_id, paths=["model/model.safetensors"])))
        assert chunks[-1].last and chunks[-1].sha256 == on_server["model/model.safetensors"]
        chunks[0].data = chunks[0].data[:-1] + bytes([chunks[0].data[-1] ^ 0x80])  # one bit flipped
        with pytest.raises(CorruptedDownload) as err:
            write_artifacts(chunks, tmp_path / "model")
        assert err.value.field == "sha256" and err.value.path == "model/model.safetensors"
        assert sha256s(tmp_path / "model")["model/model.safetensors"] == on_server["model/model.safetensors"]
    with Client(address, ca=certs / "ca.crt") as stranger, pytest.raises(Unauthenticated):  # no token
        stranger.download(final.run_id, tmp_path / "stranger")
    assert not (tmp_path / "stranger").exists() or not any((tmp_path / "stranger").iterdir())


def fedgrpo(*args: str, env: dict) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FEDGRPO_")}
    return subprocess.run([sys.executable, "-m", "fedgrpo.cli", *args], capture_output=True, text=True,
                          timeout=300, env={**clean, **env})


def test_the_commands_drive_the_orchestrator_from_a_shell(orchestrator, tmp_path):
    address, certs = orchestrator
    env = {"FEDGRPO_ADDRESS": address, "FEDGRPO_CA": str(certs / "ca.crt"),
           "FEDGRPO_TOKEN_FILE": str(certs / "api-token"), "FEDGRPO_CONFIG": str(tmp_path / "none.toml")}
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(SPEC))
    created = fedgrpo("runs", "create", "--spec", str(spec), "--watch", "--json", env=env)
    assert created.returncode == 0, created.stderr
    events = [json.loads(line) for line in created.stdout.splitlines()]
    assert [e["step"]["step"] for e in events if "step" in e] == [1, 2]
    assert events[-1]["run"]["state"] == "RUN_STATE_SUCCEEDED"
    run_id = events[-1]["run_id"]
    # Watching it again (it ended: the steps are replayed) with TensorBoard reporting, the bar on a terminal.
    watched = fedgrpo("runs", "watch", run_id, "--report-to", "tensorboard", "--logdir", str(tmp_path / "tb"),
                      env={**env, "COLUMNS": "200"})
    assert watched.returncode == 0, watched.stderr
    assert "correct so far" in watched.stdout and "succeeded" in watched.stdout
    reward = [json_format.ParseDict(e["step"], pb.StepMetrics()).reward_mean for e in events if "step" in e]
    assert scalars_in(tmp_path / "tb")["train/reward_mean"] == [(1, pytest.approx(reward[0])),
                                                                (2, pytest.approx(reward[1]))]

    listed = fedgrpo("runs", "list", "--json", env=env)
    assert listed.returncode == 0 and run_id in {r["run_id"] for r in json.loads(listed.stdout)}
    table = fedgrpo("runs", "get", run_id, env={**env, "COLUMNS": "200"})
    assert table.returncode == 0 and run_id in table.stdout and "succeeded" in table.stdout
    clients = fedgrpo("clients", "list", "--json", env=env)
    assert [c["name"] for c in json.loads(clients.stdout)] == ["client-0"]
    exported = fedgrpo("graph", "export", "--out", str(tmp_path / "graph.json"), env=env)
    assert exported.returncode == 0, exported.stderr
    nodes = json.loads((tmp_path / "graph.json").read_text())["graph"]["nodes"]
    assert {n["name"] for n in nodes if n["kind"] == "client"} == {"client-0"}
    # The run's final policy, fetched into a folder: the same bytes as the orchestrator's.
    out = tmp_path / "downloaded"
    downloaded = fedgrpo("runs", "download", run_id, "--out", str(out), "--path", "model/", env=env)
    assert downloaded.returncode == 0, downloaded.stderr
    model = Path(next(r for r in json.loads(listed.stdout) if r["run_id"] == run_id)["artifacts_path"]) / "model"
    assert sha256s(out / "model") == sha256s(model) and "model.safetensors" in sha256s(model)
    assert f"run {run_id}: {len(sha256s(model))} files" in downloaded.stdout
    escaping = fedgrpo("runs", "download", run_id, "--out", str(out), "--path", "../x", env=env)
    assert escaping.returncode == 1 and "INVALID_ARGUMENT (field paths[0])" in escaping.stderr
    # A refused call: the status, the field and the server's message; exit 1.
    bad = fedgrpo("runs", "create", "--spec", json.dumps({**SPEC, "steps": 0}), env=env)
    assert bad.returncode == 1 and "INVALID_ARGUMENT (field spec.steps)" in bad.stderr
    missing = fedgrpo("runs", "cancel", "19990101-000000-000000", env=env)
    assert missing.returncode == 1 and "NOT_FOUND" in missing.stderr
    # A config file works as well as the variables.
    config = tmp_path / "client.toml"
    config.write_text(f'address = "{address}"\nca = "{certs / "ca.crt"}"\ntoken_file = "{certs / "api-token"}"\n')
    via_file = fedgrpo("runs", "list", "--json", env={"FEDGRPO_CONFIG": str(config)})
    assert via_file.returncode == 0, via_file.stderr
