"""The reward ledger: every client's rewards a run accepted, kept so that a restart loses none.

``record`` keeps one client's rewards for one question of a step, once (a
client that submits again is ignored: the first answer counts); ``rewards_of``
gives a step's rewards back in the order they were accepted, so a resumed step
is scored from what was already received. NaN ("cannot judge") is stored as
JSON null and comes back as NaN. ``forget_after`` drops what a restart
abandons: rewards of steps that never reached the trainer.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence

from fedgrpo.services.orchestrator.store_database import StoreDatabase


class RewardLedger:
    def __init__(self, database: StoreDatabase) -> None:
        self.database = database

    def record(self, run_id: str, step: int, question_id: str, client: str, rewards: Sequence[float]) -> bool:
        """Keep one client's rewards for one question of a step; False if they were already kept."""
        row = json.dumps([None if math.isnan(r) else r for r in rewards])
        with self.database.lock, self.database.tx() as db:
            cursor = db.execute(
                "INSERT OR IGNORE INTO rewards (run_id, step, question_id, client, rewards, accepted_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (run_id, step, question_id, client, row, time.time()),
            )
        return cursor.rowcount == 1

    def rewards_of(self, run_id: str, step: int) -> list[tuple[str, str, list[float]]]:
        """(question id, client, rewards) kept for a step, in the order they were accepted; null is NaN again."""
        with self.database.lock:
            rows = self.database.execute(
                "SELECT question_id, client, rewards FROM rewards WHERE run_id = ? AND step = ? ORDER BY rowid",
                (run_id, step),
            ).fetchall()
        return [(q, c, [math.nan if r is None else r for r in json.loads(text)]) for q, c, text in rows]

    def forget_after(self, run_id: str, step: int) -> int:
        """Drop the rewards of the run's steps after ``step``; how many rows went.

        A restart abandons the scoring of a step it did not finish: those rewards judged
        candidates that were never trained on, and the step is scored again from scratch.
        """
        with self.database.lock, self.database.tx() as db:
            cursor = db.execute("DELETE FROM rewards WHERE run_id = ? AND step > ?", (run_id, step))
        return cursor.rowcount

    def size(self, run_id: str) -> int:
        """How many (step, question, client) rows the run has kept."""
        with self.database.lock:
            return self.database.execute("SELECT COUNT(*) FROM rewards WHERE run_id = ?", (run_id,)).fetchone()[0]
