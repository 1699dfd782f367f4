"""Run records and their event streams, kept on disk under ``runs/<run id>/``.

``RunStore`` owns every ``RunRecord``: its spec, state, progress and the list
of events (step metrics and state changes) that ``WatchRun`` replays and then
follows. Each change is written to ``run.json`` and each step appended to
``metrics.jsonl`` before watchers are woken, so what a caller saw is on disk.
A run found RUNNING or QUEUED at start-up was interrupted by a restart and is
marked FAILED with that reason.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp

from fedgrpo.v1 import common_pb2
from fedgrpo.v1 import orchestrator_pb2 as pb

log = logging.getLogger(__name__)

TERMINAL = {pb.RUN_STATE_SUCCEEDED, pb.RUN_STATE_FAILED, pb.RUN_STATE_CANCELLED}


def now() -> Timestamp:
    ts = Timestamp()
    ts.GetCurrentTime()
    return ts


@dataclass
class RunRecord:
    run: pb.Run
    events: list[pb.RunEvent] = field(default_factory=list)
    cancel_requested: bool = False


class RunStore:
    def __init__(self, runs_dir: Path) -> None:
        self.runs_dir = Path(runs_dir)
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        self.records: dict[str, RunRecord] = {}
        self.changed = threading.Condition()
        self._load()

    def _load(self) -> None:
        for path in sorted(self.runs_dir.glob("*/run.json")):
            try:
                run = json_format.Parse(path.read_text(), pb.Run())
            except (json_format.ParseError, OSError) as err:
                log.warning("skipping unreadable %s: %s", path, err)
                continue
            if run.state not in TERMINAL:
                run.state = pb.RUN_STATE_FAILED
                run.error = "interrupted: the orchestrator restarted during the run"
                run.end_time.CopyFrom(now())
            record = RunRecord(run)
            metrics = path.parent / "metrics.jsonl"
            if metrics.exists():
                for line in metrics.read_text().splitlines():
                    step = json_format.ParseDict(json.loads(line), pb.StepMetrics(), ignore_unknown_fields=True)
                    record.events.append(pb.RunEvent(run_id=run.run_id, step=step))
            record.events.append(pb.RunEvent(run_id=run.run_id, run=run))
            self.records[run.run_id] = record
            self._write(run)

    def run_dir(self, run_id: str) -> Path:
        return self.runs_dir / run_id

    def _write(self, run: pb.Run) -> None:
        d = self.run_dir(run.run_id)
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / "run.json.tmp"
        tmp.write_text(json_format.MessageToJson(run, preserving_proto_field_name=True))
        tmp.replace(d / "run.json")

    def create(self, spec: pb.RunSpec) -> pb.Run:
        run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]
        run = pb.Run(
            run_id=run_id, spec=spec, state=pb.RUN_STATE_QUEUED, create_time=now(),
            artifacts_path=str(self.run_dir(run_id).resolve()),
        )
        with self.changed:
            self.records[run_id] = RunRecord(run)
            self._publish_state(run_id)
            return pb.Run.FromString(run.SerializeToString())

    def get(self, run_id: str) -> pb.Run | None:
        with self.changed:
            record = self.records.get(run_id)
            return pb.Run.FromString(record.run.SerializeToString()) if record else None

    def list(self) -> list[pb.Run]:
        with self.changed:
            return [self.get(r) for r in sorted(self.records)]  # type: ignore[misc]

    def _publish_state(self, run_id: str) -> None:
        record = self.records[run_id]
        self._write(record.run)
        snapshot = pb.Run()
        snapshot.CopyFrom(record.run)
        record.events.append(pb.RunEvent(run_id=run_id, run=snapshot))
        self.changed.notify_all()

    def update(self, run_id: str, **changes: object) -> pb.Run:
        """Set fields of the run (state, error, policy, ...) and publish the change."""
        with self.changed:
            run = self.records[run_id].run
            for name, value in changes.items():
                if name == "policy":
                    run.policy.CopyFrom(value)  # type: ignore[arg-type]
                elif name in ("start_time", "end_time"):
                    getattr(run, name).CopyFrom(value)
                else:
                    setattr(run, name, value)
            self._publish_state(run_id)
            return pb.Run.FromString(run.SerializeToString())

    def add_step(self, run_id: str, metrics: pb.StepMetrics, policy: common_pb2.PolicyVersion) -> None:
        with self.changed:
            record = self.records[run_id]
            with open(self.run_dir(run_id) / "metrics.jsonl", "a") as f:
                row = json_format.MessageToDict(
                    metrics, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
                )
                f.write(json.dumps(row) + "\n")
            record.run.steps_completed = metrics.step
            record.run.policy.CopyFrom(policy)
            self._write(record.run)
            record.events.append(pb.RunEvent(run_id=run_id, step=metrics))
            self.changed.notify_all()

    def request_cancel(self, run_id: str) -> pb.Run:
        with self.changed:
            record = self.records[run_id]
            if record.run.state == pb.RUN_STATE_QUEUED:
                return self.update(run_id, state=pb.RUN_STATE_CANCELLED, end_time=now())
            if record.run.state == pb.RUN_STATE_RUNNING:
                record.cancel_requested = True
            return pb.Run.FromString(record.run.SerializeToString())

    def cancel_requested(self, run_id: str) -> bool:
        with self.changed:
            return self.records[run_id].cancel_requested

    def follow(self, run_id: str, alive: callable) -> Iterator[pb.RunEvent]:  # type: ignore[valid-type]
        """Every event of the run from the first, then new ones until it ends."""
        sent = 0
        while True:
            with self.changed:
                record = self.records[run_id]
                while sent == len(record.events) and record.run.state not in TERMINAL and alive():
                    self.changed.wait(timeout=1.0)
                pending = record.events[sent:]
                done = record.run.state in TERMINAL
            yield from pending
            sent += len(pending)
            if (done and sent == len(record.events)) or not alive():
                return
