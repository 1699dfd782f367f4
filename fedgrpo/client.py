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

:class:`AsyncClient` (``fedgrpo.client_async``, on ``grpc.aio``) has the same
methods as coroutines (``watch``: an async iterator). Both build their
channel, requests, retries and errors with this module's shared pieces.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
from google.rpc.error_details_pb2 import BadRequest
from grpc_status import rpc_status
from pydantic import Field
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource

from fedgrpo import rpc_errors, serving, spec_enums
from fedgrpo.atomic_file import atomic_writer
from fedgrpo.security import Identity, with_token
from fedgrpo.v1 import orchestrator_pb2 as pb
from fedgrpo.v1 import orchestrator_pb2_grpc as pb_grpc

__all__ = [
    "Client", "ClientSettings", "FedgrpoError", "InvalidArgument", "NotFound", "AlreadyExists", "Unauthenticated",
    "PermissionDenied", "FailedPrecondition", "ResourceExhausted", "Unavailable", "CorruptedDownload", "RUN_ENDED",
    "write_artifacts", "verify_file",
]

FieldViolation = BadRequest.FieldViolation  # .field, .description

def __getattr__(name: str) -> Any:
    # fedgrpo.client.AsyncClient lives in client_async.py, which imports this module's shared pieces.
    if name == "AsyncClient":
        from fedgrpo.client_async import AsyncClient

        return AsyncClient
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

RUN_ENDED = frozenset({pb.RUN_STATE_SUCCEEDED, pb.RUN_STATE_FAILED, pb.RUN_STATE_CANCELLED})
# A call may be sent again after these without changing what it does (CreateRun: with its request_id).
RETRY_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


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


def verify_file(path: str, received: int, sha256: str, last: pb.ArtifactChunk) -> None:
    """Raise :class:`CorruptedDownload` unless ``received`` bytes hashing to ``sha256`` (hex) are the file
    whose ``last`` chunk (with its size and SHA-256) the server sent."""
    if received != last.size:
        raise CorruptedDownload(path, f"{received} bytes received, the server sent {last.size}", "size")
    if not hmac.compare_digest(sha256, last.sha256):
        raise CorruptedDownload(path, f"SHA-256 {sha256} of the bytes received, the server sent {last.sha256!r}",
                                "sha256")


def _destination(dest_dir: Path, path: str) -> Path:
    """Where the run's file ``path`` goes under ``dest_dir``; a path that would leave it is refused."""
    names = path.split("/")
    if not path or path.startswith("/") or "\\" in path or "\x00" in path or any(n in ("", ".", "..") for n in names):
        raise CorruptedDownload(path or "''", "not a relative path of the run folder", "path")
    target = dest_dir.joinpath(*names)
    if not target.resolve().is_relative_to(dest_dir.resolve()):  # a link in dest_dir leading elsewhere
        raise CorruptedDownload(path, f"would be written outside {dest_dir} (through a symbolic link there)", "path")
    return target


def write_artifacts(chunks: Iterable[pb.ArtifactChunk], dest_dir: Path | str,
                    on_chunk: Callable[[pb.ArtifactChunk], None] | None = None) -> list[Path]:
    """Write a DownloadRunArtifacts stream's files under ``dest_dir`` (made if missing); the written paths.

    Each file goes to a temporary file beside its place and replaces it only once its chunks came in order
    (offsets without gaps) and its size and SHA-256 are those of its last chunk (:func:`verify_file`);
    otherwise :class:`CorruptedDownload`, and that file is not written. Files verified before a failure stay.
    ``on_chunk`` sees every chunk (the first carries ``total_files`` and ``total_bytes``)."""
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    seen: set[str] = set()
    stream = iter(chunks)
    for chunk in stream:  # the first chunk of a file
        path = chunk.path
        if path in seen:
            raise CorruptedDownload(path, "sent twice in one stream", "path")
        target = _destination(dest_dir, path)
        target.parent.mkdir(parents=True, exist_ok=True)
        digest, received = hashlib.sha256(), 0
        with atomic_writer(target, private=False) as f:
            while True:
                if chunk.path != path:
                    raise CorruptedDownload(path, f"its last chunk never came ({chunk.path!r} began)", "last")
                if chunk.offset != received:
                    raise CorruptedDownload(path, f"a chunk at offset {chunk.offset} after {received} bytes", "offset")
                f.write(chunk.data)
                digest.update(chunk.data)
                received += len(chunk.data)
                if on_chunk is not None:
                    on_chunk(chunk)
                if chunk.last:
                    break
                following = next(stream, None)
                if following is None:
                    raise CorruptedDownload(path, "the stream ended before the file's last chunk", "last")
                chunk = following
            verify_file(path, received, digest.hexdigest(), chunk)
        seen.add(path)
        written.append(target)
    return written


class ClientSettings(BaseSettings):
    """Where the orchestrator is and how to prove who you are: arguments, FEDGRPO_* env vars or a TOML file."""

    model_config = SettingsConfigDict(env_prefix="FEDGRPO_", extra="ignore")

    address: str = Field("127.0.0.1:50051", description="The orchestrator's public API, host:port.")
    ca: Path | None = Field(None, description="CA certificate (PEM) that signed the orchestrator's: TLS. None: "
                            "plaintext (a loopback development orchestrator).")
    token: str = Field("", description="API token, sent as `authorization: Bearer <token>`.")
    token_file: Path | None = Field(None, description="A file holding the API token (`fedgrpo certs init` writes "
                                    "`api-token`); used when token is empty.")
    cert: Path | None = Field(None, description="Client certificate (PEM) for mutual TLS, with key and ca.")
    key: Path | None = Field(None, description="Its private key (PEM).")
    timeout: float = Field(30.0, gt=0, description="Seconds each unary call may take.")

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                   file_secret_settings) -> tuple[PydanticBaseSettingsSource, ...]:  # noqa: ANN001
        path = Path(os.environ.get("FEDGRPO_CONFIG", Path.home() / ".config" / "fedgrpo" / "client.toml"))
        return init_settings, env_settings, TomlConfigSettingsSource(settings_cls, toml_file=path)


# ---- shared by Client and AsyncClient: the channel, the requests, when to send a call again ----------
CHANNEL_OPTIONS = serving.message_options() + serving.RECONNECT_OPTIONS
# A watch is opened again after these too: RESOURCE_EXHAUSTED (too many watchers now), CANCELLED (server stopping).
WATCH_RETRY_CODES = RETRY_CODES | {grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.CANCELLED}
GENERATE_TIMEOUT = 600.0  # a generation may queue behind a training step


def connection_of(s: ClientSettings) -> dict[str, Any]:
    """A client's arguments from settings: the token read from its file, the mutual-TLS identity loaded."""
    token = s.token or (s.token_file.read_text().strip() if s.token_file else "")
    identity = None
    if s.cert or s.key:
        if not (s.cert and s.key and s.ca):
            raise ValueError("mutual TLS needs cert, key and ca (FEDGRPO_CERT, FEDGRPO_KEY, FEDGRPO_CA)")
        identity = Identity.load(s.cert, s.key, s.ca)
    return {"address": s.address, "ca": s.ca, "token": token or None, "identity": identity, "timeout": s.timeout}


def channel_credentials(ca: Path | bytes | None, identity: Identity | None) -> grpc.ChannelCredentials | None:
    """Mutual TLS with ``identity``, or TLS checking the server against ``ca``; None: plaintext."""
    if identity is not None:
        return identity.channel_credentials()
    if ca is not None:
        return grpc.ssl_channel_credentials(ca if isinstance(ca, bytes) else Path(ca).read_bytes())
    return None


def retry_delay(err: grpc.RpcError, attempt: int, retries: int) -> float:
    """Seconds before sending a failed call again; raises its typed error when it may not be sent again."""
    if err.code() not in RETRY_CODES or attempt == retries:
        raise error_of(err) from None
    return serving.retry_backoff(attempt)


def create_run_request(spec: pb.RunSpec | Mapping[str, Any], request_id: str | None) -> pb.CreateRunRequest:
    """A RunSpec (or its JSON form as a dict, choice fields by readable name) with ``request_id``, drawn when
    not given: retries share it. A name that is no choice is refused here as the server would refuse it."""
    if not isinstance(spec, pb.RunSpec):
        try:
            spec = spec_enums.spec_message(spec)
        except spec_enums.UnknownChoice as err:
            raise InvalidArgument(grpc.StatusCode.INVALID_ARGUMENT, err.problem, f"spec.{err.field}") from None
    return pb.CreateRunRequest(spec=spec, request_id=request_id or str(uuid.uuid4()))


def runs_page(states: Sequence[int], page_size: int) -> Callable[[str], pb.ListRunsRequest]:
    return lambda token: pb.ListRunsRequest(page_size=page_size, page_token=token, states=list(states))


def clients_page(page_size: int) -> Callable[[str], pb.ListRewardClientsRequest]:
    return lambda token: pb.ListRewardClientsRequest(page_size=page_size, page_token=token)


def generate_request(prompts: Sequence[str], n: int, temperature: float, top_p: float, max_tokens: int, system: str,
                     raw_prompts: bool, run_id: str, policy_version: int | None) -> pb.GenerateRequest:
    request = pb.GenerateRequest(prompts=list(prompts), n=n, temperature=temperature, top_p=top_p,
                                 max_tokens=max_tokens, system=system, raw_prompts=raw_prompts, run_id=run_id)
    if policy_version is not None:
        request.policy_version = policy_version
    return request


class WatchCursor:
    """Where a resumable watch of a run stands: the request that (re)opens it after the last step received,
    whether the run ended, and how long to wait before opening it again after it broke."""

    def __init__(self, run_id: str, after_step: int, patience: float) -> None:
        self.run_id, self.after_step, self.patience = run_id, after_step, patience
        self.heard, self.attempt, self.ended = time.monotonic(), 0, False

    def request(self) -> pb.WatchRunRequest:
        return pb.WatchRunRequest(run_id=self.run_id, after_step=self.after_step)

    def seen(self, event: pb.RunEvent) -> None:
        self.heard, self.attempt = time.monotonic(), 0
        if event.HasField("step"):
            self.after_step = event.step.step
        elif event.run.state in RUN_ENDED:
            self.ended = True

    def broken(self, err: grpc.RpcError | None) -> float:
        """Seconds before reopening a stream that failed with ``err`` (None: it ended before the run did);
        raises the typed error of a refusal, or :class:`Unavailable` after ``patience`` seconds of silence."""
        if err is not None and err.code() not in WATCH_RETRY_CODES:
            raise error_of(err) from None
        problem = "the stream ended before the run" if err is None else f"{err.code().name}: {err.details()}"
        if time.monotonic() - self.heard > self.patience:
            raise Unavailable(grpc.StatusCode.UNAVAILABLE,
                              f"run {self.run_id}: no event for {self.patience:.0f}s and the watch is lost ({problem})")
        self.attempt += 1
        return serving.retry_backoff(self.attempt - 1)


class Client:
    """A connection to one orchestrator (see the module docstring). Use as a context manager, or close()."""

    def __init__(
        self, address: str, *, ca: Path | bytes | None = None, token: str | None = None,
        identity: Identity | None = None, timeout: float = 30.0,
    ) -> None:
        self.address, self.timeout = address, timeout
        credentials = channel_credentials(ca, identity)
        if credentials is not None:
            channel = grpc.secure_channel(address, credentials, options=CHANNEL_OPTIONS)
        else:
            channel = grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
        channel = with_token(channel, token)
        self.channel = channel
        self.stub = pb_grpc.OrchestratorServiceStub(channel)

    @classmethod
    def from_settings(cls, s: ClientSettings) -> Client:
        return cls(**connection_of(s))

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- calls -------------------------------------------------------------------
    def _call(self, method: Callable, request: Any, retries: int = 0) -> Any:
        for attempt in range(retries + 1):
            try:
                return method(request, timeout=self.timeout)
            except grpc.RpcError as err:
                time.sleep(retry_delay(err, attempt, retries))
        raise AssertionError("unreachable")

    def _every_page(self, method: Callable, items: str, request: Callable[[str], Any]) -> list:
        """Every item of a paged list call: ``request(token)`` per page, until next_page_token is empty."""
        found: list = []
        token = ""
        while True:
            reply = self._call(method, request(token), retries=3)
            found.extend(getattr(reply, items))
            if not (token := reply.next_page_token):
                return found

    def create_run(self, spec: pb.RunSpec | Mapping[str, Any], request_id: str | None = None,
                   retries: int = 5) -> pb.Run:
        """Create a run from a RunSpec (or its JSON form as a dict, whose choice fields may carry readable
        names: ``{"loss_type": "dr_grpo"}``). Retried on a timeout or an unavailable server with the same
        ``request_id`` (drawn when not given): at most one run is created."""
        return self._call(self.stub.CreateRun, create_run_request(spec, request_id), retries)

    def get_run(self, run_id: str) -> pb.Run:
        return self._call(self.stub.GetRun, pb.GetRunRequest(run_id=run_id), retries=3)

    def list_runs(self, states: Sequence[int] = (), page_size: int = 0) -> list[pb.Run]:
        """Every run (only those in ``states``, RunState values, when given), oldest first, page by page."""
        return self._every_page(self.stub.ListRuns, "runs", runs_page(states, page_size))

    def cancel_run(self, run_id: str) -> pb.Run:
        """Cancel: a queued run at once, a running one after its current step (``cancel_requested``)."""
        return self._call(self.stub.CancelRun, pb.CancelRunRequest(run_id=run_id), retries=3)

    def watch(self, run_id: str, after_step: int = 0, patience: float = 600.0) -> Iterator[pb.RunEvent]:
        """The run's events (after ``after_step``) until it ends. A stream that breaks is resumed after the
        last step received, for up to ``patience`` seconds without an event; then :class:`Unavailable`."""
        cursor = WatchCursor(run_id, after_step, patience)
        while True:
            try:
                for event in self.stub.WatchRun(cursor.request()):
                    cursor.seen(event)
                    yield event
                if cursor.ended:
                    return
                delay = cursor.broken(None)  # the server is shutting down
            except grpc.RpcError as err:
                delay = cursor.broken(err)
            time.sleep(delay)

    def wait(self, run_id: str, on_step: Callable[[pb.StepMetrics], None] | None = None,
             after_step: int = 0) -> tuple[pb.Run, list[pb.StepMetrics]]:
        """Follow the run to its end: (the final run, every step's metrics after ``after_step``)."""
        steps: list[pb.StepMetrics] = []
        run = None
        for event in self.watch(run_id, after_step):
            if event.HasField("step"):
                steps.append(event.step)
                if on_step is not None:
                    on_step(event.step)
            else:
                run = event.run
        return (run if run is not None else self.get_run(run_id)), steps

    def generate(self, prompts: Sequence[str], *, n: int = 1, temperature: float = 0.0, top_p: float = 1.0,
                 max_tokens: int = 48, system: str = "", raw_prompts: bool = False, run_id: str = "",
                 policy_version: int | None = None, timeout: float | None = None) -> pb.GenerateResponse:
        """Completions of a policy: the one served now, ``run_id``'s latest, or ``policy_version`` 0 (the base
        model); the response's ``policy`` names the version that answered."""
        request = generate_request(prompts, n, temperature, top_p, max_tokens, system, raw_prompts, run_id,
                                   policy_version)
        try:
            return self.stub.Generate(request, timeout=timeout or max(self.timeout, GENERATE_TIMEOUT))
        except grpc.RpcError as err:
            raise error_of(err) from None

    def list_clients(self, page_size: int = 0) -> list[pb.RewardClientInfo]:
        """Every reward client, by name, page by page."""
        return self._every_page(self.stub.ListRewardClients, "clients", clients_page(page_size))

    def download(self, run_id: str, dest_dir: Path | str, paths: Sequence[str] = (), *,
                 on_chunk: Callable[[pb.ArtifactChunk], None] | None = None,
                 timeout: float | None = None) -> list[Path]:
        """A run's files under ``dest_dir``: every file, or those ``paths`` select (relative to the run folder, a
        file such as "metrics.jsonl" or a folder such as "model/"); the written paths, in the server's order.
        Each is written atomically once its size and SHA-256 match (:func:`write_artifacts`); a run still
        training sends run.json and metrics.jsonl alone (any other path: :class:`FailedPrecondition`)."""
        request = pb.DownloadRunArtifactsRequest(run_id=run_id, paths=list(paths))
        try:
            return write_artifacts(self.stub.DownloadRunArtifacts(request, timeout=timeout), dest_dir, on_chunk)
        except grpc.RpcError as err:
            raise error_of(err) from None

    def confidence_graph(self, run_id: str = "") -> pb.ConfidenceGraphView:
        """The probed graph; with ``run_id``, as that run sees it (its confidence, its router)."""
        return self._call(self.stub.GetConfidenceGraph, pb.GetConfidenceGraphRequest(run_id=run_id), retries=3)
