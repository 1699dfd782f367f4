"""The orchestrator's link to the policy trainer, across the trainer's restarts.

``TrainerLink`` starts (or resumes) a run on the trainer and trains its
batches. Nothing is lost to a trainer crash: every batch was written to the
run store before it is sent (write-ahead), so a trainer that restarted from
an older checkpoint is brought back by replaying, in order, the logged steps
its checkpoint does not hold (``sync``); the trainer applies a step at most
once, so a retried or replayed step is never applied twice. Calls to an
unreachable trainer are retried with jittered backoff for up to
``retry_seconds``, then the error goes to the run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

import grpc

from fedgrpo import observability as obs
from fedgrpo.serving import TRANSIENT_CODES as TRANSIENT
from fedgrpo.serving import retry_backoff
from fedgrpo.v1 import common_pb2
from fedgrpo.v1 import policy_trainer_pb2 as tpb
from fedgrpo.v1 import policy_trainer_pb2_grpc as tpb_grpc

from .runs import RunStore

log = logging.getLogger(__name__)

T = TypeVar("T")
CALL_SECONDS = 600.0  # one StartPolicy or Train call (a large model on a slow device)


class TrainerLink:
    def __init__(self, stub: tpb_grpc.PolicyTrainerServiceStub, store: RunStore, retry_seconds: float = 600.0) -> None:
        self.stub, self.store, self.retry_seconds = stub, store, retry_seconds
        self.optimizers: dict[str, tpb.OptimizerSettings] = {}
        self.replayed = 0  # steps replayed since the caller last took the count
        self._unreachable = False

    def take_replayed(self) -> int:
        count, self.replayed = self.replayed, 0
        return count

    def start(self, run_id: str, optimizer: tpb.OptimizerSettings) -> common_pb2.PolicyVersion:
        """Make ``run_id`` the trainer's run, resuming it and replaying what the trainer lacks."""
        self.optimizers[run_id] = optimizer
        return self._retrying(run_id, lambda: self.sync(run_id))

    def sync(self, run_id: str) -> common_pb2.PolicyVersion:
        """Start (or resume) the run on the trainer and replay the logged steps it does not hold."""
        version = self.stub.StartPolicy(
            tpb.StartPolicyRequest(run_id=run_id, optimizer=self.optimizers[run_id]), timeout=CALL_SECONDS
        )
        for step, blob in self.store.completed_batches(run_id, version.last_step):
            version = self.stub.Train(tpb.TrainBatch.FromString(blob), timeout=CALL_SECONDS).policy
            self.replayed += 1
            obs.STEPS.labels("replayed").inc()
            log.warning(
                "run %s: replayed step %d to the trainer (it had lost it) -> v%d", run_id, step, version.version
            )
        return version

    def train(self, batch: tpb.TrainBatch) -> tpb.TrainResponse:
        """Train one logged batch; a trainer that restarted is resynchronised first, then asked again."""
        run_id = batch.run_id

        def attempt() -> tpb.TrainResponse:
            if self._unreachable:
                self._unreachable = False
                self.sync(run_id)
            try:
                return self.stub.Train(batch, timeout=CALL_SECONDS)
            except grpc.RpcError as err:
                if err.code() in TRANSIENT:
                    self._unreachable = True  # it may come back from an older checkpoint
                if err.code() != grpc.StatusCode.FAILED_PRECONDITION:
                    raise
                # The trainer restarted (no policy started, or it is behind): bring it back, then retry.
                log.warning("run %s step %d: trainer says %s; resynchronising", run_id, batch.step, err.details())
                version = self.sync(run_id)
                if version.last_step >= batch.step:
                    # Its checkpoint already holds this step: applied once, never again.
                    log.warning("run %s step %d: already in the trainer's checkpoint", run_id, batch.step)
                    return tpb.TrainResponse(policy=version)
                return self.stub.Train(batch, timeout=CALL_SECONDS)

        return self._retrying(run_id, attempt)

    def _retrying(self, run_id: str, call: Callable[[], T]) -> T:
        """Run ``call``, retrying transient failures with jittered backoff for up to retry_seconds."""
        deadline = time.monotonic() + self.retry_seconds
        attempt = 0
        while True:
            try:
                return call()
            except grpc.RpcError as err:
                if err.code() not in TRANSIENT or time.monotonic() >= deadline:
                    raise
                wait = retry_backoff(attempt)
                log.warning("run %s: trainer %s (%s); retrying in %.1fs", run_id, err.code().name, err.details(), wait)
                attempt += 1
                time.sleep(wait)
