"""The client library's errors: one :class:`FedgrpoError` subclass per gRPC status, built by :func:`error_of`.

``error_of(err)`` reads a refused call: its status ``code``, its message, and
the ``google.rpc`` details the server attached (the BadRequest's field
violations, the ErrorInfo's ``reason``); ``field`` is the violation's field, or
the ErrorInfo's ``metadata.field``, or else (a server without details) the
``"<field>: <problem>"`` prefix of the message. :class:`CorruptedDownload`
(DATA_LOSS) is raised by the client itself when a downloaded file does not
match the size or SHA-256 the server sent.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from google.rpc.error_details_pb2 import BadRequest
from grpc_status import rpc_status

from fedgrpo import rpc_errors

FieldViolation = BadRequest.FieldViolation  # .field, .description


class FedgrpoError(Exception):
    """A call the orchestrator refused or could not answer: its status, the field at fault, the message, and
    the details' ``reason`` (ErrorInfo; None without details) and ``violations`` (BadRequest field violations)."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, code: grpc.StatusCode, message: str, field: str | None = None, reason: str | None = None,
                 violations: Sequence[FieldViolation] = ()) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code, self.message, self.field = code, message, field
        self.reason, self.violations = reason, list(violations)


class InvalidArgument(FedgrpoError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(FedgrpoError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(FedgrpoError):
    code = grpc.StatusCode.ALREADY_EXISTS


class Unauthenticated(FedgrpoError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(FedgrpoError):
    code = grpc.StatusCode.PERMISSION_DENIED


class FailedPrecondition(FedgrpoError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(FedgrpoError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(FedgrpoError):
    code = grpc.StatusCode.UNAVAILABLE


class CorruptedDownload(FedgrpoError):
    """A downloaded file that is not what the server sent (its ``field``: ``size``, ``sha256``, ``offset``,
    ``last`` or ``path`` disagrees): it is not written, and the destination keeps what it held."""

    code = grpc.StatusCode.DATA_LOSS

    def __init__(self, path: str, problem: str, field: str) -> None:
        super().__init__(self.code, f"{path}: {problem}; the file was not written", field)
        self.path = path


_BY_CODE = {cls.code: cls for cls in (InvalidArgument, NotFound, AlreadyExists, Unauthenticated, PermissionDenied,
                                      FailedPrecondition, ResourceExhausted, Unavailable)}
_FIELD_CODES = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.ALREADY_EXISTS}


def error_of(err: grpc.RpcError) -> FedgrpoError:
    """The typed error of a failed call: the field from the status's details (a BadRequest violation, or
    ErrorInfo's metadata), else from the message, which the API words ``<field>: <problem>``."""
    code, message = err.code(), err.details() or ""
    info, violations = None, []
    try:
        status = rpc_status.from_call(err) if isinstance(err, grpc.Call) else None
    except ValueError:  # details that contradict the call's own code or message: ignore them
        status = None
    if status is not None:
        info, violations = rpc_errors.details(status)
    field = violations[0].field if violations else (info.metadata.get("field") if info is not None else None)
    if field is None and code in _FIELD_CODES and ": " in message:
        head, _, _ = message.partition(": ")
        if head and " " not in head:
            field = head
    if field and message.startswith(f"{field}: "):
        message = message[len(field) + 2:]
    reason = info.reason if info is not None else None
    return _BY_CODE.get(code, FedgrpoError)(code, message, field or None, reason, violations)
