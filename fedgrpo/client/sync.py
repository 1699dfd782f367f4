"""The blocking client: :class:`Client`, one method per API call (see :mod:`fedgrpo.client`)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc

from fedgrpo.client.downloads import write_artifacts
from fedgrpo.client.errors import error_of
from fedgrpo.client.shared import (
    CHANNEL_OPTIONS,
    GENERATE_TIMEOUT,
    ClientSettings,
    WatchCursor,
    channel_credentials,
    clients_page,
    connection_of,
    create_run_request,
    generate_request,
    retry_delay,
    runs_page,
)
from fedgrpo.security import Identity, with_token
from fedgrpo.v1 import orchestrator_pb2 as pb
from fedgrpo.v1 import orchestrator_pb2_grpc as pb_grpc


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
    def _call(self, method: Callable, request: Any, retries: int = 0, timeout: float | None = None) -> Any:
        for attempt in range(retries + 1):
            try:
                return method(request, timeout=timeout or self.timeout)
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
        return self._call(self.stub.Generate, request, timeout=timeout or max(self.timeout, GENERATE_TIMEOUT))

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
