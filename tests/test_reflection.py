"""Server reflection v1 and v1alpha on a server built as every service builds it, with the protos' comments.

A client that knows only the reflection protocol (grpcurl, buf curl) asks the
orchestrator's API for the file defining ``fedgrpo.v1.OrchestratorService``
and gets it with its imports and its comments (the generated Python code has
none: they come from ``fedgrpo/v1/descriptors.binpb``); buf curl, a real v1
client, lists the methods. No proto file is given to any client.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2

from fedgrpo import reflection, serving
from fedgrpo.job.launcher import free_port
from fedgrpo.settings import ServiceSettings
from fedgrpo.v1 import orchestrator_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
BUF = shutil.which("buf") or str(ROOT / ".cache/buf/node_modules/.bin/buf")
ORCHESTRATOR = "fedgrpo.v1.OrchestratorService"
# A comment in protos/fedgrpo/v1/orchestrator.proto, on CreateRun.
COMMENT = "Validate a run spec and queue the run; runs execute one at a time."


@pytest.fixture(scope="module")
def address():
    port = free_port()
    endpoint = serving.Endpoint(
        [(orchestrator_pb2_grpc.add_OrchestratorServiceServicer_to_server,
          orchestrator_pb2_grpc.OrchestratorServiceServicer(), ORCHESTRATOR)], port)
    server, health = serving.build_server(endpoint, ServiceSettings(plaintext=True, reflection=True))
    server.start()
    serving.set_serving(health, [ORCHESTRATOR])
    yield f"127.0.0.1:{port}"
    server.stop(grace=None)


def ask(address: str, service: str, request: reflection_pb2.ServerReflectionRequest):
    """One request on the ServerReflectionInfo stream of ``service`` (v1 and v1alpha share the wire format)."""
    with grpc.insecure_channel(address) as ch:
        call = ch.stream_stream(
            f"/{service}/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        return next(call(iter([request]), timeout=30))


def comments(file: descriptor_pb2.FileDescriptorProto) -> str:
    return "\n".join(loc.leading_comments for loc in file.source_code_info.location)


@pytest.mark.parametrize("service", [reflection.V1, reflection.V1ALPHA])
def test_the_file_of_a_service_comes_with_its_imports_and_comments(address, service):
    reply = ask(address, service, reflection_pb2.ServerReflectionRequest(file_containing_symbol=ORCHESTRATOR))
    assert reply.WhichOneof("message_response") == "file_descriptor_response", reply
    files = {f.name: f for f in map(descriptor_pb2.FileDescriptorProto.FromString,
                                    reply.file_descriptor_response.file_descriptor_proto)}
    assert set(files) == {"fedgrpo/v1/orchestrator.proto", "fedgrpo/v1/common.proto", "google/protobuf/timestamp.proto"}
    orchestrator = files["fedgrpo/v1/orchestrator.proto"]
    assert [s.name for s in orchestrator.service] == ["OrchestratorService"]
    assert COMMENT in comments(orchestrator)


def test_both_versions_list_the_services_and_themselves(address):
    for service in (reflection.V1, reflection.V1ALPHA):
        reply = ask(address, service, reflection_pb2.ServerReflectionRequest(list_services=""))
        assert sorted(s.name for s in reply.list_services_response.service) == sorted(
            [ORCHESTRATOR, "grpc.health.v1.Health", reflection.V1, reflection.V1ALPHA])


def test_an_unknown_symbol_is_not_found(address):
    unknown = reflection_pb2.ServerReflectionRequest(file_containing_symbol="fedgrpo.v1.Nope")
    reply = ask(address, reflection.V1, unknown)
    assert reply.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]


@pytest.mark.skipif(not Path(BUF).exists(), reason="buf is installed by `make lint` (npm @bufbuild/buf)")
def test_buf_curl_lists_the_methods_over_reflection_v1(address):
    proc = subprocess.run(
        [BUF, "curl", "--protocol", "grpc", "--http2-prior-knowledge", "--reflect-protocol", "grpc-v1",
         "--list-methods", f"http://{address}"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    methods = proc.stdout.split()
    assert f"{ORCHESTRATOR}/CreateRun" in methods and f"{ORCHESTRATOR}/WatchRun" in methods
