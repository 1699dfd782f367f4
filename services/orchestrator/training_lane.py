"""A run's steps trained in order on a thread of their own, so the next rollouts can be made meanwhile.

``TrainingLane(train_and_record, version)`` starts one worker thread.
``submit(metrics, batch)`` queues a collected step; the worker trains and
records the queued steps one at a time in the order they came, each through
``train_and_record(metrics, batch, version, since) -> new version`` (the
run loop's: batch written ahead, trained, step recorded), so at most one step
is ever logged and not yet recorded, which is what recovery expects.

``wait_through(step)`` blocks until every submitted step up to ``step`` is
recorded and returns the newest policy version; how far it lets the caller
run ahead is the caller's choice (the run's ``max_async_level``). A failure
in the worker is raised by the next ``wait_through``; the worker takes no
step after it. ``close()`` lets the queued steps finish (their rewards are
already in the ledger: recording them loses nothing), then stops the worker;
it never raises.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

from fedgrpo.v1 import common_pb2
from fedgrpo.v1 import orchestrator_pb2 as pb
from fedgrpo.v1 import policy_trainer_pb2 as tpb

TrainAndRecord = Callable[
    [pb.StepMetrics, "tpb.TrainBatch | None", common_pb2.PolicyVersion, float], common_pb2.PolicyVersion
]


class TrainingLane:
    def __init__(self, train_and_record: TrainAndRecord, version: common_pb2.PolicyVersion) -> None:
        self._train = train_and_record
        self._version = version
        self._since = time.monotonic()  # when the last step was recorded: a step's wall time starts there
        self._jobs: deque[tuple[pb.StepMetrics, tpb.TrainBatch | None]] = deque()  # queued + the one training
        self._error: BaseException | None = None
        self._closing = False
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._work, name="training-lane", daemon=True)
        self._thread.start()

    def submit(self, metrics: pb.StepMetrics, batch: tpb.TrainBatch | None) -> None:
        with self._changed:
            if self._closing:
                raise RuntimeError("the training lane is closed")
            self._jobs.append((metrics, batch))
            self._changed.notify_all()

    def wait_through(self, step: int) -> common_pb2.PolicyVersion:
        """The newest policy once every submitted step <= ``step`` is recorded; raises the worker's failure."""
        with self._changed:
            while self._error is None and self._jobs and self._jobs[0][0].step <= step:
                self._changed.wait()
            if self._error is not None:
                raise self._error
            return self._version

    def close(self) -> None:
        with self._changed:
            self._closing = True
            self._changed.notify_all()
        self._thread.join()

    def _work(self) -> None:
        while True:
            with self._changed:
                while not self._jobs and not self._closing:
                    self._changed.wait()
                if not self._jobs:
                    return
                metrics, batch = self._jobs[0]
                version, since = self._version, self._since
            try:
                version = self._train(metrics, batch, version, since)
            except BaseException as err:  # handed to the run loop, which ends the run with it
                with self._changed:
                    self._error = err
                    self._jobs.clear()
                    self._changed.notify_all()
                return
            with self._changed:
                self._version, self._since = version, time.monotonic()
                self._jobs.popleft()
                self._changed.notify_all()
