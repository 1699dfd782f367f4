"""Run records and their event streams, kept in SQLite and mirrored under ``runs/<run id>/``.

``RunStore`` owns every ``RunRecord``: its spec, state, progress and the list
of events (step metrics and state changes) that ``WatchRun`` replays and then
follows. The database (``runs/orchestrator.sqlite3`` unless told otherwise) is
the source of truth: each change is committed there (WAL, synchronous=FULL)
before watchers are woken, then mirrored to ``run.json`` and, for a step, one
line of ``metrics.jsonl``, the files users read.

What crash recovery needs is kept too: ``begin_step`` logs a step's batch
before it goes to the trainer (write-ahead), ``add_step`` marks it completed
at most once (``DuplicateStep`` otherwise), ``completed_batches`` gives back
what a trainer that lost steps must be replayed, and the reward ledger, the
confidence graph and the clients' details survive restarts: the reward ledger
(``store.ledger``, :mod:`~fedgrpo.services.orchestrator.reward_ledger`) and the
federation's state (``store.federation``,
:mod:`~fedgrpo.services.orchestrator.federation_state`) share the store's
database (:mod:`~fedgrpo.services.orchestrator.store_database`).

At start-up the records and their events are rebuilt from the database. A run
found RUNNING or QUEUED was interrupted by the restart: it keeps its state and
``interrupted()`` returns it (running ones first) so the executor resumes it.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from google.protobuf.timestamp_pb2 import Timestamp

from fedgrpo.services.orchestrator.federation_state import FederationState
from fedgrpo.services.orchestrator.reward_ledger import RewardLedger
from fedgrpo.services.orchestrator.store_database import StoreDatabase
from fedgrpo.v1 import common_pb2
from fedgrpo.v1 import orchestrator_pb2 as pb

log = logging.getLogger(__name__)


class RunCancelled(Exception):
    """Raised inside a run's execution when its cancel was requested (``RunStore.cancel_requested``)."""


TERMINAL = {pb.RUN_STATE_SUCCEEDED, pb.RUN_STATE_FAILED, pb.RUN_STATE_CANCELLED}
def new_run_id() -> str:
    """A fresh run id: creation time and 6 random hex digits (probes carry ids of this shape too)."""
    return time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]


def now() -> Timestamp:
    ts = Timestamp()
    ts.GetCurrentTime()
    return ts


def copy(run: pb.Run) -> pb.Run:
    return pb.Run.FromString(run.SerializeToString())


class DuplicateStep(ValueError):
    def __init__(self, run_id: str, step: int) -> None:
        super().__init__(f"run {run_id}: step {step} is already completed; a step is recorded once")
        self.run_id, self.step = run_id, step


@dataclass
class RunRecord:
    run: pb.Run
    events: list[pb.RunEvent] = field(default_factory=list)
    cancel_requested: bool = False


@dataclass
class PendingStep:
    """A step logged by ``begin_step`` whose completion was never recorded."""

    step: int
    batch: bytes | None
    partial: pb.StepMetrics


class RunStore:
    def __init__(self, runs_dir: Path, db_path: Path | None = None) -> None:
        self.runs_dir = Path(runs_dir)
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        self.db_path = Path(db_path) if db_path is not None else self.runs_dir / "orchestrator.sqlite3"
        self.records: dict[str, RunRecord] = {}
        self._interrupted: list[str] = []
        self.database = StoreDatabase(self.db_path, on_new=self._import_legacy)
        self.changed = self.database.lock  # also woken when a run has new events
        self.ledger = RewardLedger(self.database)
        self.federation = FederationState(self.database)
        with self.changed:
            self._load()

    # ---- runs that an orchestrator without a database left as files ---------------
    def _import_legacy(self, db: sqlite3.Connection) -> None:
        """Take in the runs an orchestrator without a database left as files, once, when the database is new."""
        for path in sorted(self.runs_dir.glob("*/run.json")):
            try:
                run = json_format.Parse(path.read_text(), pb.Run())
                metrics = path.parent / "metrics.jsonl"
                lines = metrics.read_text().splitlines() if metrics.exists() else []
                steps = [json_format.ParseDict(json.loads(line), pb.StepMetrics(), ignore_unknown_fields=True)
                         for line in lines]
            except (json_format.ParseError, ValueError, OSError) as err:
                log.warning("not importing unreadable %s: %s", path.parent, err)
                continue
            if run.state not in TERMINAL:  # without a write-ahead log there is nothing to resume from
                run.state = pb.RUN_STATE_FAILED
                run.error = "interrupted: the orchestrator restarted during the run"
                run.end_time.CopyFrom(now())
            db.execute("INSERT OR IGNORE INTO runs (run_id, run) VALUES (?, ?)", (run.run_id, run.SerializeToString()))
            for m in steps:
                db.execute(
                    "INSERT OR IGNORE INTO steps (run_id, step, partial, metrics, completed) VALUES (?, ?, ?, ?, 1)",
                    (run.run_id, m.step, m.SerializeToString(), m.SerializeToString()),
                )
            log.info("imported run %s (%d steps) from %s", run.run_id, len(steps), path.parent)

    def _load(self) -> None:
        rows = self.database.execute("SELECT run_id, run, cancel_requested FROM runs ORDER BY run_id").fetchall()
        for run_id, blob, cancel in rows:
            try:
                run = pb.Run.FromString(blob)
                steps = [
                    pb.StepMetrics.FromString(m) for (m,) in self.database.execute(
                        "SELECT metrics FROM steps WHERE run_id = ? AND completed = 1 ORDER BY step", (run_id,)
                    )
                ]
            except DecodeError as err:
                log.warning("skipping run %s: unreadable row: %s", run_id, err)
                continue
            record = RunRecord(run, cancel_requested=bool(cancel))
            record.events = [pb.RunEvent(run_id=run_id, step=m) for m in steps]
            record.events.append(pb.RunEvent(run_id=run_id, run=copy(run)))
            self.records[run_id] = record
            if run.state in (pb.RUN_STATE_RUNNING, pb.RUN_STATE_QUEUED):
                self._interrupted.append(run_id)
            self._mirror(run, steps)

    def _record(self, run_id: str) -> RunRecord:
        record = self.records.get(run_id)
        if record is None:
            raise KeyError(f"run_id {run_id!r}: no such run")
        return record

    # ---- the files users read ---------------------------------------------------
    def run_dir(self, run_id: str) -> Path:
        return self.runs_dir / run_id

    def _write(self, run: pb.Run) -> None:
        d = self.run_dir(run.run_id)
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / "run.json.tmp"
        tmp.write_text(json_format.MessageToJson(run, preserving_proto_field_name=True))
        tmp.replace(d / "run.json")

    @staticmethod
    def _metrics_line(metrics: pb.StepMetrics) -> str:
        row = json_format.MessageToDict(
            metrics, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )
        return json.dumps(row) + "\n"

    def _mirror(self, run: pb.Run, steps: list[pb.StepMetrics]) -> None:
        """Bring the files back in line with the database (a crash may have come between the two)."""
        try:
            self._write(run)
            path = self.run_dir(run.run_id) / "metrics.jsonl"
            lines = path.read_text().splitlines() if path.exists() else []
            if len(lines) != len(steps):
                tmp = path.with_suffix(".jsonl.tmp")
                tmp.write_text("".join(self._metrics_line(m) for m in steps))
                tmp.replace(path)
        except OSError as err:
            log.warning("run %s: could not rewrite its files: %s", run.run_id, err)

    # ---- runs --------------------------------------------------------------------
    def create(self, spec: pb.RunSpec, request_id: str = "", request_spec: bytes = b"") -> pb.Run:
        """A new queued run; with a ``request_id`` already used, the run that call created instead (a retry
        racing the first call; the caller compares ``request_spec`` through :meth:`created_by` first)."""
        run_id = new_run_id()
        run = pb.Run(
            run_id=run_id, spec=spec, state=pb.RUN_STATE_QUEUED, create_time=now(),
            artifacts_path=str(self.run_dir(run_id).resolve()),
        )
        with self.changed:
            with self.database.tx() as db:
                if request_id:
                    earlier = db.execute("SELECT run_id FROM create_requests WHERE request_id = ?",
                                         (request_id,)).fetchone()
                    if earlier is not None:  # a retry that raced the first call
                        return copy(self.records[earlier[0]].run)
                    db.execute("INSERT INTO create_requests (request_id, run_id, spec) VALUES (?, ?, ?)",
                               (request_id, run_id, request_spec))
                db.execute("INSERT INTO runs (run_id, run) VALUES (?, ?)", (run_id, run.SerializeToString()))
            self.records[run_id] = RunRecord(run)
            self._publish_state(run_id)
            return copy(run)

    def created_by(self, request_id: str) -> tuple[str, bytes] | None:
        """(run id, the request's spec bytes) of the CreateRun call that used ``request_id``; None if none did."""
        with self.changed:
            row = self.database.execute("SELECT run_id, spec FROM create_requests WHERE request_id = ?",
                                  (request_id,)).fetchone()
        return (row[0], bytes(row[1])) if row else None

    def get(self, run_id: str) -> pb.Run | None:
        with self.changed:
            record = self.records.get(run_id)
            return copy(record.run) if record else None

    def list(self) -> list[pb.Run]:
        with self.changed:
            return [copy(self.records[r].run) for r in sorted(self.records)]

    def interrupted(self) -> list[pb.Run]:
        """Runs found RUNNING or QUEUED at start-up and not ended since: running first, each by create time."""
        with self.changed:
            runs = [copy(self.records[r].run) for r in self._interrupted]
        runs = [r for r in runs if r.state in (pb.RUN_STATE_RUNNING, pb.RUN_STATE_QUEUED)]
        return sorted(runs, key=lambda r: (r.state != pb.RUN_STATE_RUNNING, r.create_time.seconds, r.create_time.nanos))

    def _publish_state(self, run_id: str) -> None:
        record = self.records[run_id]
        record.events.append(pb.RunEvent(run_id=run_id, run=copy(record.run)))
        self.changed.notify_all()
        self._write(record.run)

    def update(self, run_id: str, **changes: object) -> pb.Run:
        """Set fields of the run (state, error, policy, ...) and publish the change."""
        with self.changed:
            record = self._record(run_id)
            run = copy(record.run)
            for name, value in changes.items():
                if name in ("policy", "start_time", "end_time"):
                    getattr(run, name).CopyFrom(value)
                else:
                    setattr(run, name, value)
            with self.database.tx() as db:
                db.execute("UPDATE runs SET run = ? WHERE run_id = ?", (run.SerializeToString(), run_id))
            record.run = run
            self._publish_state(run_id)
            return copy(run)

    def request_cancel(self, run_id: str) -> pb.Run:
        with self.changed:
            record = self._record(run_id)
            if record.run.state == pb.RUN_STATE_QUEUED:
                return self.update(run_id, state=pb.RUN_STATE_CANCELLED, end_time=now())
            if record.run.state == pb.RUN_STATE_RUNNING and not record.cancel_requested:
                with self.database.tx() as db:
                    db.execute("UPDATE runs SET cancel_requested = 1 WHERE run_id = ?", (run_id,))
                record.cancel_requested = True
                return self.update(run_id, cancel_requested=True)
            return copy(record.run)

    def cancel_requested(self, run_id: str) -> bool:
        with self.changed:
            return self._record(run_id).cancel_requested

    def follow(self, run_id: str, alive: callable, after_step: int = 0) -> Iterator[pb.RunEvent]:  # type: ignore[valid-type]
        """Every event of the run from the first, then new ones until it ends; with ``after_step``, from the
        event after that step's metrics (from the first if the run has not reached it yet)."""
        sent = 0
        if after_step > 0:
            with self.changed:
                events = self.records[run_id].events
                sent = next((i + 1 for i, e in enumerate(events)
                             if e.HasField("step") and e.step.step == after_step), 0)
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

    # ---- steps -------------------------------------------------------------------
    def _completed(self, run_id: str, step: int) -> bool:
        row = self.database.execute(
            "SELECT completed FROM steps WHERE run_id = ? AND step = ?", (run_id, step)
        ).fetchone()
        return bool(row and row[0])

    def begin_step(self, run_id: str, step: int, batch: bytes | None, partial: pb.StepMetrics) -> None:
        """Log a step about to be trained (before the Train call), replacing an earlier unfinished log of it."""
        with self.changed:
            self._record(run_id)
            if self._completed(run_id, step):
                raise DuplicateStep(run_id, step)
            with self.database.tx() as db:
                db.execute(
                    "INSERT OR REPLACE INTO steps (run_id, step, batch, partial, completed) VALUES (?, ?, ?, ?, 0)",
                    (run_id, step, batch, partial.SerializeToString()),
                )

    def add_step(self, run_id: str, metrics: pb.StepMetrics, policy: common_pb2.PolicyVersion) -> None:
        """Record step ``metrics.step`` as completed with the policy it produced; once only."""
        with self.changed:
            record = self._record(run_id)
            if self._completed(run_id, metrics.step):
                raise DuplicateStep(run_id, metrics.step)
            run = copy(record.run)
            run.steps_completed = metrics.step
            run.policy.CopyFrom(policy)
            blob = metrics.SerializeToString()
            with self.database.tx() as db:
                db.execute(
                    "INSERT INTO steps (run_id, step, partial, metrics, policy, completed) VALUES (?, ?, ?, ?, ?, 1)"
                    " ON CONFLICT (run_id, step) DO UPDATE SET"
                    " metrics = excluded.metrics, policy = excluded.policy, completed = 1",
                    (run_id, metrics.step, blob, blob, policy.SerializeToString()),
                )
                db.execute("UPDATE runs SET run = ? WHERE run_id = ?", (run.SerializeToString(), run_id))
            record.run = run
            record.events.append(pb.RunEvent(run_id=run_id, step=metrics))
            self.changed.notify_all()
            self.run_dir(run_id).mkdir(parents=True, exist_ok=True)
            with open(self.run_dir(run_id) / "metrics.jsonl", "a") as f:
                f.write(self._metrics_line(metrics))
            self._write(run)

    def pending_step(self, run_id: str) -> PendingStep | None:
        """The highest step logged by ``begin_step`` and not completed, if any."""
        with self.changed:
            row = self.database.execute(
                "SELECT step, batch, partial FROM steps WHERE run_id = ? AND completed = 0 ORDER BY step DESC LIMIT 1",
                (run_id,),
            ).fetchone()
        if row is None:
            return None
        return PendingStep(row[0], row[1], pb.StepMetrics.FromString(row[2]))

    def completed_batches(self, run_id: str, after_step: int) -> list[tuple[int, bytes]]:
        """Batches of the completed steps after ``after_step``, in order: what a trainer that lost them must replay."""
        with self.changed:
            return self.database.execute(
                "SELECT step, batch FROM steps WHERE run_id = ? AND completed = 1 AND batch IS NOT NULL AND step > ?"
                " ORDER BY step",
                (run_id, after_step),
            ).fetchall()

    def last_step(self, run_id: str) -> pb.StepMetrics | None:
        """The metrics of the run's highest completed step, if any (a resumed run takes its state from them)."""
        with self.changed:
            row = self.database.execute(
                "SELECT metrics FROM steps WHERE run_id = ? AND completed = 1 ORDER BY step DESC LIMIT 1", (run_id,)
            ).fetchone()
        return pb.StepMetrics.FromString(row[0]) if row else None

    def completed_steps(self, run_id: str) -> list[int]:
        with self.changed:
            rows = self.database.execute(
                "SELECT step FROM steps WHERE run_id = ? AND completed = 1 ORDER BY step", (run_id,)
            ).fetchall()
        return [step for (step,) in rows]

    def close(self) -> None:
        self.database.close()
