"""What the sync and asyncio clients share: settings, the channel, the requests, when to send a call again.

:class:`ClientSettings` reads where the orchestrator is and how to prove who
you are from arguments, ``FEDGRPO_*`` variables or a TOML file
(``FEDGRPO_CONFIG``, default ``~/.config/fedgrpo/client.toml``). The request
builders (``create_run_request`` takes readable choice names and draws the
``request_id`` retries share), ``retry_delay`` (which statuses are sent again,
and how long to wait) and :class:`WatchCursor` (where a broken watch resumes)
are pure, so :class:`~fedgrpo.client.sync.Client` and
:class:`~fedgrpo.client.aio.AsyncClient` differ only in how they wait.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
from pydantic import Field
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource

from fedgrpo import serving, spec_enums
from fedgrpo.client.errors import InvalidArgument, Unavailable, error_of
from fedgrpo.security import Identity
from fedgrpo.v1 import orchestrator_pb2 as pb

RUN_ENDED = frozenset({pb.RUN_STATE_SUCCEEDED, pb.RUN_STATE_FAILED, pb.RUN_STATE_CANCELLED})
# A call may be sent again after these without changing what it does (CreateRun: with its request_id).
RETRY_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


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
