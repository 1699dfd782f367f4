"""The client library's typed errors, from the statuses and messages the API answers with (pure)."""

import grpc
import pytest

from fedgrpo.client import AlreadyExists, FedgrpoError, InvalidArgument, NotFound, Unavailable, error_of


class Refused(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


@pytest.mark.parametrize("code, details, kind, field, message", [
    (grpc.StatusCode.INVALID_ARGUMENT, "spec.steps: got 0, expected 1 to 100000", InvalidArgument, "spec.steps",
     "got 0, expected 1 to 100000"),
    (grpc.StatusCode.ALREADY_EXISTS, "request_id: 'a' already created run r", AlreadyExists, "request_id",
     "'a' already created run r"),
    # a message that does not start with a field keeps its whole text
    (grpc.StatusCode.INVALID_ARGUMENT, "bad request: no", InvalidArgument, None, "bad request: no"),
    (grpc.StatusCode.NOT_FOUND, "run_id 'x': no such run", NotFound, None, "run_id 'x': no such run"),
    (grpc.StatusCode.UNAVAILABLE, "failed to connect", Unavailable, None, "failed to connect"),
    (grpc.StatusCode.DATA_LOSS, "odd", FedgrpoError, None, "odd"),
])
def test_a_refusal_becomes_its_typed_error_with_the_field(code, details, kind, field, message):
    err = error_of(Refused(code, details))
    assert type(err) is kind and err.code == code and err.field == field and err.message == message
    assert str(err) == f"{code.name}: {message}"
