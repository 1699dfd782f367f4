"""fedgrpo's asyncio client: :class:`fedgrpo.client.Client`'s calls as coroutines, on ``grpc.aio``.

Contract
--------
``AsyncClient(address, ca=..., token=..., identity=...)`` (or
``AsyncClient.from_settings(ClientSettings())``) connects as
:class:`fedgrpo.client.Client` does and offers the same calls, awaited:
``create_run`` (retried with one ``request_id``: at most one run), ``get_run``,
``list_runs`` (every page), ``cancel_run``, ``watch`` (an async iterator of the
run's events, resumed after the last step received when the stream breaks),
``wait``, ``generate``, ``list_clients``, ``confidence_graph``. Refusals raise
the same :class:`fedgrpo.client.FedgrpoError` subclasses. The channel
credentials, requests, retry rules and error mapping are the sync client's
(``fedgrpo.client``'s shared pieces); only the waiting is asyncio's. Use it as
``async with AsyncClient(...) as client:`` (or ``await client.close()``),
inside one event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

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
from fedgrpo.security import AUTHORIZATION, Identity
from fedgrpo.v1 import orchestrator_pb2 as pb
from fedgrpo.v1 import orchestrator_pb2_grpc as pb_grpc

__all__ = ["AsyncClient"]


class AsyncClient:
    """A ``grpc.aio`` connection to one orchestrator (see the module docstring)."""

    def __init__(
        self, address: str, *, ca: Path | bytes | None = None, token: str | None = None,
        identity: Identity | None = None, timeout: float = 30.0,
    ) -> None:
        self.address, self.timeout = address, timeout
        credentials = channel_credentials(ca, identity)
        if credentials is not None:
            self.channel = grpc.aio.secure_channel(address, credentials, options=CHANNEL_OPTIONS)
        else:
            self.channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
        self.stub = pb_grpc.OrchestratorServiceStub(self.channel)
        # grpc.aio channels take no sync interceptor: the token rides on each call (security.with_token's header).
        self.metadata = ((AUTHORIZATION, f"Bearer {token}"),) if token else ()

    @classmethod
    def from_settings(cls, s: ClientSettings) -> AsyncClient:
        return cls(**connection_of(s))

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ---- calls -------------------------------------------------------------------
    async def _call(self, method: Callable, request: Any, retries: int = 0, timeout: float | None = None) -> Any:
        for attempt in range(retries + 1):
            try:
                return await method(request, timeout=timeout or self.timeout, metadata=self.metadata)
            except grpc.RpcError as err:
                await asyncio.sleep(retry_delay(err, attempt, retries))
        raise AssertionError("unreachable")

    async def _every_page(self, method: Callable, items: str, request: Callable[[str], Any]) -> list:
        found: list = []
        token = ""
        while True:
            reply = await self._call(method, request(token), retries=3)
            found.extend(getattr(reply, items))
            if not (token := reply.next_page_token):
                return found

    async def create_run(self, spec: pb.RunSpec | Mapping[str, Any], request_id: str | None = None,
                         retries: int = 5) -> pb.Run:
        """Create a run; retried on a timeout or an unavailable server with one ``request_id``: one run at most."""
        return await self._call(self.stub.CreateRun, create_run_request(spec, request_id), retries)

    async def get_run(self, run_id: str) -> pb.Run:
        return await self._call(self.stub.GetRun, pb.GetRunRequest(run_id=run_id), retries=3)

    async def list_runs(self, states: Sequence[int] = (), page_size: int = 0) -> list[pb.Run]:
        """Every run (only those in ``states`` when given), oldest first, page by page."""
        return await self._every_page(self.stub.ListRuns, "runs", runs_page(states, page_size))

    async def cancel_run(self, run_id: str) -> pb.Run:
        return await self._call(self.stub.CancelRun, pb.CancelRunRequest(run_id=run_id), retries=3)

    async def watch(self, run_id: str, after_step: int = 0, patience: float = 600.0) -> AsyncIterator[pb.RunEvent]:
        """The run's events (after ``after_step``) until it ends; a broken stream is opened again after the last
        step received, for up to ``patience`` seconds without an event (then :class:`Unavailable`)."""
        cursor = WatchCursor(run_id, after_step, patience)
        while True:
            call = self.stub.WatchRun(cursor.request(), metadata=self.metadata)
            try:
                async for event in call:
                    cursor.seen(event)
                    yield event
                if cursor.ended:
                    return
                delay = cursor.broken(None)  # the server is shutting down
            except grpc.RpcError as err:
                delay = cursor.broken(err)
            finally:
                call.cancel()  # a no-op once the stream ended; frees it when the caller stops early
            await asyncio.sleep(delay)

    async def wait(self, run_id: str, on_step: Callable[[pb.StepMetrics], None] | None = None,
                   after_step: int = 0) -> tuple[pb.Run, list[pb.StepMetrics]]:
        """Follow the run to its end: (the final run, every step's metrics after ``after_step``)."""
        steps: list[pb.StepMetrics] = []
        run = None
        async for event in self.watch(run_id, after_step):
            if event.HasField("step"):
                steps.append(event.step)
                if on_step is not None:
                    on_step(event.step)
            else:
                run = event.run
        return (run if run is not None else await self.get_run(run_id)), steps

    async def generate(self, prompts: Sequence[str], *, n: int = 1, temperature: float = 0.0, top_p: float = 1.0,
                       max_tokens: int = 48, system: str = "", raw_prompts: bool = False, run_id: str = "",
                       policy_version: int | None = None, timeout: float | None = None) -> pb.GenerateResponse:
        """Completions of a policy (see :meth:`fedgrpo.client.Client.generate`); not retried."""
        request = generate_request(prompts, n, temperature, top_p, max_tokens, system, raw_prompts, run_id,
                                   policy_version)
        return await self._call(self.stub.Generate, request, timeout=timeout or max(self.timeout, GENERATE_TIMEOUT))

    async def list_clients(self, page_size: int = 0) -> list[pb.RewardClientInfo]:
        return await self._every_page(self.stub.ListRewardClients, "clients", clients_page(page_size))

    async def confidence_graph(self, run_id: str = "") -> pb.ConfidenceGraphView:
        """The probed graph; with ``run_id``, as that run sees it."""
        return await self._call(self.stub.GetConfidenceGraph, pb.GetConfidenceGraphRequest(run_id=run_id), retries=3)
