"""Errors as data: every status a fedgrpo service sends carries ``google.rpc`` details.

``abort(context, code, message, reason=..., field=..., problem=...)`` ends a call
with a ``google.rpc.Status`` (through ``grpcio-status``) whose details are an
``ErrorInfo(reason, domain="fedgrpo.v1", metadata)`` and, for INVALID_ARGUMENT
naming a field, a ``BadRequest`` with one ``FieldViolation(field, description)``.
The status message stays the readable text (``"<field>: <problem>"`` when a field is
at fault), so people and clients that read no details lose nothing. The field is
also in ``ErrorInfo.metadata["field"]`` for statuses other than INVALID_ARGUMENT
(ALREADY_EXISTS names one too).

``reason`` is an UPPER_SNAKE_CASE cause (AIP-193) a caller may branch on; it
defaults to the status code's name. ``details(status)`` reads a ``google.rpc.Status``
back into its ``ErrorInfo`` and field violations (the client library uses it).
"""

from __future__ import annotations

from typing import NoReturn

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

DOMAIN = "fedgrpo.v1"


def status(
    code: grpc.StatusCode, message: str, reason: str | None = None, field: str | None = None,
    problem: str | None = None,
) -> grpc.Status:
    """The gRPC status (code, message, details) of a refusal; see the module docstring."""
    info = error_details_pb2.ErrorInfo(reason=reason or code.name, domain=DOMAIN)
    if field:
        info.metadata["field"] = field
    proto = status_pb2.Status(code=code.value[0], message=message)
    proto.details.add().Pack(info)
    if field and code == grpc.StatusCode.INVALID_ARGUMENT:
        violation = error_details_pb2.BadRequest.FieldViolation(field=field, description=problem or message)
        proto.details.add().Pack(error_details_pb2.BadRequest(field_violations=[violation]))
    return rpc_status.to_status(proto)


def abort(
    context: grpc.ServicerContext, code: grpc.StatusCode, message: str, *, reason: str | None = None,
    field: str | None = None, problem: str | None = None,
) -> NoReturn:
    context.abort_with_status(status(code, message, reason, field, problem))
    raise AssertionError("unreachable")  # abort_with_status raises


def details(proto: status_pb2.Status) -> tuple[error_details_pb2.ErrorInfo | None,
                                              list[error_details_pb2.BadRequest.FieldViolation]]:
    """(the ErrorInfo, every BadRequest field violation) a status carries; (None, []) without details."""
    info, violations = None, []
    for any_detail in proto.details:
        if any_detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            any_detail.Unpack(info)
        elif any_detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            any_detail.Unpack(bad)
            violations.extend(bad.field_violations)
    return info, violations
