"""The orchestrator's SQLite database: one connection, one lock, the schema and its migrations.

``StoreDatabase`` opens ``path`` (WAL, synchronous=FULL: a committed change
survives a crash of the process or the machine) and brings its schema to
``SCHEMA_VERSION``; a database written by a newer orchestrator is refused.
Every reader and writer holds ``lock`` (a ``threading.Condition``, so the run
store can also wait on it for new events) around its statements, and writes
go through :meth:`tx`, one transaction that commits on success and rolls back
on any error. The parts of the store (runs and steps in
:mod:`~fedgrpo.services.orchestrator.runs`, the reward ledger, the federation's
state) each own their tables and share this object.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

SCHEMA_VERSION = 2  # 2: create_requests (CreateRun's request_id)
SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    run BLOB NOT NULL,                      -- pb.Run
    cancel_requested INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS steps (
    run_id TEXT NOT NULL,
    step INTEGER NOT NULL,
    batch BLOB,                             -- tpb.TrainBatch, NULL if the step trained nothing
    partial BLOB NOT NULL,                  -- pb.StepMetrics known before training
    metrics BLOB,                           -- final pb.StepMetrics, NULL until completed
    policy BLOB,                            -- common_pb2.PolicyVersion after the step
    completed INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (run_id, step)
);
CREATE TABLE IF NOT EXISTS rewards (
    run_id TEXT NOT NULL,
    step INTEGER NOT NULL,
    question_id TEXT NOT NULL,
    client TEXT NOT NULL,
    rewards TEXT NOT NULL,                  -- JSON list, NaN (no reward) as null
    accepted_at REAL NOT NULL,
    PRIMARY KEY (run_id, step, question_id, client)
);
CREATE TABLE IF NOT EXISTS confidence (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    graph_json TEXT NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS clients (
    name TEXT PRIMARY KEY,
    info TEXT NOT NULL,                     -- JSON object
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS create_requests (
    request_id TEXT PRIMARY KEY,            -- CreateRunRequest.request_id
    run_id TEXT NOT NULL,
    spec BLOB NOT NULL                      -- the request's RunSpec as sent (deterministic bytes)
);
"""


class StoreDatabase:
    def __init__(self, path: Path, on_new: Callable[[sqlite3.Connection], None] | None = None) -> None:
        """Open (or create) the database at ``path``; ``on_new`` runs inside the transaction that creates
        the schema of a brand-new database (the run store imports runs older orchestrators left as files)."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Condition()
        self.connection = sqlite3.connect(self.path, check_same_thread=False)
        self.connection.execute("PRAGMA journal_mode=WAL")
        self.connection.execute("PRAGMA synchronous=FULL")
        with self.lock:
            self._migrate(on_new)

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: committed on success, rolled back on any error. Hold ``lock``."""
        with self.connection:
            self.connection.execute("BEGIN IMMEDIATE")
            yield self.connection

    def execute(self, sql: str, parameters: tuple = ()) -> sqlite3.Cursor:
        """A read outside a transaction. Hold ``lock``."""
        return self.connection.execute(sql, parameters)

    def _migrate(self, on_new: Callable[[sqlite3.Connection], None] | None) -> None:
        version = self.connection.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise RuntimeError(f"{self.path}: schema version {version}, this orchestrator knows up to {SCHEMA_VERSION}")
        if version == SCHEMA_VERSION:
            return
        with self.tx() as db:
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            if version == 0 and on_new is not None:
                on_new(db)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def close(self) -> None:
        with self.lock:
            self.connection.close()
