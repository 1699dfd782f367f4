"""gRPC server reflection, v1 and v1alpha, answering with the protos' comments.

``enable(service_names, server)`` registers grpcio-reflection's servicer under
both ``grpc.reflection.v1alpha.ServerReflection`` (what grpcio-reflection
serves) and ``grpc.reflection.v1.ServerReflection`` (what grpcurl and buf curl
ask for first; grpcio-reflection has no v1 yet, grpc/grpc#38576). The two
versions are the same messages with the same field numbers, so the v1
method decodes and encodes with the v1alpha classes: the wire cannot tell
them apart; its own descriptor (``grpc/reflection/v1/reflection.proto``, for
clients that describe every listed service) is v1alpha's renamed. It answers
from a pool of its own, so nothing global changes. The file descriptors it
returns for ``fedgrpo/v1/*.proto`` come from ``fedgrpo/v1/descriptors.binpb`` (written beside the generated code by
setup.py and `make proto` with ``--include_source_info``), so clients see the
comments the generated Python code drops; without that file they are served
without comments and a warning says how to get them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from importlib import resources

import grpc
from google.protobuf import descriptor, descriptor_pb2, descriptor_pool, text_format
from grpc_reflection.v1alpha import reflection, reflection_pb2

log = logging.getLogger(__name__)

V1ALPHA = reflection.SERVICE_NAME
V1 = "grpc.reflection.v1.ServerReflection"
SERVICE_NAMES = (V1, V1ALPHA)
DESCRIPTOR_SET = "descriptors.binpb"


def documented_files() -> dict[str, bytes]:
    """Serialized FileDescriptorProtos with source info, by file name; empty if the set was not generated."""
    try:
        data = (resources.files("fedgrpo.v1") / DESCRIPTOR_SET).read_bytes()
    except FileNotFoundError:
        log.warning("fedgrpo/v1/%s is missing: reflection serves the API without its comments (run `make proto` "
                    "or reinstall fedgrpo)", DESCRIPTOR_SET)
        return {}
    return {f.name: f.SerializeToString() for f in descriptor_pb2.FileDescriptorSet.FromString(data).file}


def v1_file() -> descriptor_pb2.FileDescriptorProto:
    """grpc/reflection/v1/reflection.proto: v1alpha's file under the v1 names (the messages are the same)."""
    v1alpha = descriptor_pb2.FileDescriptorProto()
    descriptor_pool.Default().FindFileContainingSymbol(V1ALPHA).CopyToProto(v1alpha)
    renamed = text_format.MessageToString(v1alpha).replace("grpc.reflection.v1alpha", "grpc.reflection.v1")
    v1 = text_format.Parse(renamed, descriptor_pb2.FileDescriptorProto())
    v1.name = "grpc/reflection/v1/reflection.proto"
    return v1


def service_pool(service_names: Iterable[str]) -> descriptor_pool.DescriptorPool:
    """A pool holding the files that define ``service_names`` (their generated modules are imported) and v1."""
    pool = descriptor_pool.DescriptorPool()
    added: set[str] = set()

    def add(file: descriptor.FileDescriptor) -> None:
        if file.name in added:
            return
        for dependency in file.dependencies:
            add(dependency)
        proto = descriptor_pb2.FileDescriptorProto()
        file.CopyToProto(proto)
        pool.Add(proto)
        added.add(file.name)

    for name in service_names:
        if name != V1:
            add(descriptor_pool.Default().FindFileContainingSymbol(name))
    pool.Add(v1_file())
    return pool


class DocumentedReflectionServicer(reflection.ReflectionServicer):
    """grpcio-reflection's servicer, with each file it returns swapped for the same file with its comments."""

    def __init__(self, service_names: Iterable[str], files: dict[str, bytes]):
        names = list(dict.fromkeys([*service_names, *SERVICE_NAMES]))  # in order, once each
        super().__init__(names, pool=service_pool(names))
        self._files = files

    def ServerReflectionInfo(self, request_iterator, context) -> Iterator[reflection_pb2.ServerReflectionResponse]:
        for response in super().ServerReflectionInfo(request_iterator, context):
            if response.HasField("file_descriptor_response"):
                protos = response.file_descriptor_response.file_descriptor_proto
                for i, serialized in enumerate(protos):
                    name = descriptor_pb2.FileDescriptorProto.FromString(serialized).name
                    protos[i] = self._files.get(name, serialized)
            yield response


def enable(service_names: Iterable[str], server: grpc.Server) -> None:
    """Serve reflection v1 and v1alpha on ``server`` for ``service_names`` (their own names are added)."""
    servicer = DocumentedReflectionServicer(service_names, documented_files())
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler(name, {"ServerReflectionInfo": handler}) for name in SERVICE_NAMES]
    )
