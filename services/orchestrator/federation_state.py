"""The federation's state that outlives a restart: the confidence graph and the joined clients.

``save_graph`` / ``load_graph`` keep the latest confidence graph as the JSON
the router writes (one row, replaced each time); ``save_client`` /
``load_clients`` keep each joined client's member record by name, so clients
that joined from elsewhere are known again after a restart before they
reconnect. Both are the orchestrator's own view: nothing here came from a
client but what it declared when joining.
"""

from __future__ import annotations

import json
import time

from fedgrpo.services.orchestrator.store_database import StoreDatabase


class FederationState:
    def __init__(self, database: StoreDatabase) -> None:
        self.database = database

    def save_graph(self, graph_json: str) -> None:
        with self.database.lock, self.database.tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO confidence (id, graph_json, updated_at) VALUES (1, ?, ?)",
                (graph_json, time.time()),
            )

    def load_graph(self) -> str | None:
        with self.database.lock:
            row = self.database.execute("SELECT graph_json FROM confidence WHERE id = 1").fetchone()
        return row[0] if row else None

    def save_client(self, name: str, info: dict) -> None:
        text = json.dumps(info, sort_keys=True)
        with self.database.lock, self.database.tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO clients (name, info, updated_at) VALUES (?, ?, ?)", (name, text, time.time())
            )

    def load_clients(self) -> dict[str, dict]:
        with self.database.lock:
            rows = self.database.execute("SELECT name, info FROM clients ORDER BY name").fetchall()
        return {name: json.loads(info) for name, info in rows}
