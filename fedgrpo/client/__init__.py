"""fedgrpo's client library: drive an orchestrator from another system.

Contract
--------
``Client(address, ca=..., token=..., identity=...)`` connects to an
orchestrator's public API: plaintext, TLS that checks the server against
``ca`` (a PEM file or bytes), or mutual TLS with an ``identity`` (a
:class:`fedgrpo.security.Identity`); ``token`` is sent as ``authorization:
Bearer <token>``. ``Client.from_settings(ClientSettings())`` takes the same
from arguments, ``FEDGRPO_*`` environment variables or a TOML file
(``FEDGRPO_CONFIG``, default ``~/.config/fedgrpo/client.toml``).

Calls: ``create_run`` (retry-safe: a ``request_id`` is drawn when none is
given, and a call that timed out or found the server unavailable is retried
with the same id, so it never creates a second run), ``get_run``,
``list_runs``, ``cancel_run``, ``watch`` (a run's events; a broken stream is
resumed after the last step received), ``wait`` (to the run's end, with a
callback per step), ``generate``, ``list_clients``, ``confidence_graph``,
``download`` (a run's files into a folder: every file written atomically
after its size and SHA-256 matched what the server sent, else
:class:`CorruptedDownload` and the file is not written).
Results are the API's protobuf messages (typed; ``json_format`` turns them
into dicts). A refused call raises :class:`FedgrpoError` (a subclass per
status: :class:`InvalidArgument`, :class:`NotFound`, ...) carrying the gRPC
status ``code``, the request ``field`` at fault when the server named one,
the server's message, and what the status's ``google.rpc`` details say: the
ErrorInfo ``reason`` (``RATE_LIMITED``, ``INVALID_FIELD``, ...) and the
BadRequest ``violations``. A server without details (older fedgrpo) still
gives ``field``, parsed from its ``"<field>: <problem>"`` message.

:class:`AsyncClient` (``fedgrpo.client.aio``, on ``grpc.aio``) has the same
methods as coroutines (``watch``: an async iterator). Both build their
channel, requests, retries and errors with the same pieces
(``fedgrpo.client.shared``, ``.errors``, ``.downloads``).
"""

from __future__ import annotations

from typing import Any

from fedgrpo.client.downloads import verify_file, write_artifacts
from fedgrpo.client.errors import (
    AlreadyExists,
    CorruptedDownload,
    FailedPrecondition,
    FedgrpoError,
    FieldViolation,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    error_of,
)
from fedgrpo.client.shared import RETRY_CODES, RUN_ENDED, ClientSettings
from fedgrpo.client.sync import Client

__all__ = [
    "Client", "AsyncClient", "ClientSettings", "FedgrpoError", "InvalidArgument", "NotFound", "AlreadyExists",
    "Unauthenticated", "PermissionDenied", "FailedPrecondition", "ResourceExhausted", "Unavailable",
    "CorruptedDownload", "FieldViolation", "RUN_ENDED", "RETRY_CODES", "error_of", "write_artifacts", "verify_file",
]


def __getattr__(name: str) -> Any:
    # AsyncClient imports grpc.aio: only when asked for.
    if name == "AsyncClient":
        from fedgrpo.client.aio import AsyncClient

        return AsyncClient
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
