"""StoreDatabase: the schema version contract and the all-or-nothing transaction every part of the store relies on."""

import sqlite3

import pytest

from fedgrpo.services.orchestrator.reward_ledger import RewardLedger
from fedgrpo.services.orchestrator.store_database import SCHEMA_VERSION, StoreDatabase


def test_a_new_database_gets_the_schema_and_its_version_and_on_new_runs_once(tmp_path):
    calls = []
    db = StoreDatabase(tmp_path / "a" / "db.sqlite3", on_new=lambda conn: calls.append(conn))
    tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"runs", "steps", "rewards", "confidence", "clients", "create_requests"} <= tables
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    db.close()
    StoreDatabase(tmp_path / "a" / "db.sqlite3", on_new=lambda conn: calls.append(conn)).close()
    assert len(calls) == 1


def test_a_database_from_a_newer_orchestrator_is_refused_with_both_versions(tmp_path):
    path = tmp_path / "db.sqlite3"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(RuntimeError, match=f"schema version {SCHEMA_VERSION + 1}.*knows up to {SCHEMA_VERSION}"):
        StoreDatabase(path)


def test_a_failed_transaction_leaves_nothing_behind(tmp_path):
    db = StoreDatabase(tmp_path / "db.sqlite3")
    ledger = RewardLedger(db)
    assert ledger.record("run", 1, "q1", "alice", [1.0])
    with pytest.raises(sqlite3.IntegrityError), db.lock, db.tx() as conn:
        conn.execute("DELETE FROM rewards")
        conn.execute("INSERT INTO rewards (run_id) VALUES ('no step: violates NOT NULL')")
    assert ledger.rewards_of("run", 1) == [("q1", "alice", [1.0])]
    assert ledger.size("run") == 1
