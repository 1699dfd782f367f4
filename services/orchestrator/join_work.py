"""The work a join starts (store write, probing), done on one thread.

``JoinWork(callbacks)``: ``submit(client)`` queues the callbacks for a
client that joined with a new or changed description; one daemon thread
runs them, in join order, each with the client as it is when its turn comes.
A client already waiting is not queued again (its later join is covered by
the same turn), so a storm of joins costs one thread and at most one turn
per client, never a thread per join. A failing callback is logged and the
others still run. ``close()`` stops the thread after the turn in progress.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

log = logging.getLogger(__name__)


class JoinWork:
    def __init__(self, callbacks: Sequence[Callable[[Any], None]]) -> None:
        self.callbacks = callbacks  # read at each turn: callbacks added later still run
        self._pending: collections.OrderedDict[str, Any] = collections.OrderedDict()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    def submit(self, client: Any) -> bool:
        """Queue ``client``'s join callbacks; False when it was already waiting (coalesced)."""
        with self._cond:
            if self._closed:
                return False
            if client.name in self._pending:
                return False
            self._pending[client.name] = client
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="join-work", daemon=True)
                self._thread.start()
            self._cond.notify()
            return True

    def waiting(self) -> int:
        with self._cond:
            return len(self._pending)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._pending.clear()
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                _, client = self._pending.popitem(last=False)
            for callback in list(self.callbacks):
                try:
                    callback(client)
                except Exception:  # one failing callback (a store error, a probe bug) must not stop the rest
                    log.exception("join work for %s failed in %s", getattr(client, "name", client), callback)
