"""The judge's replies, shared through one SQLite file by the clients of a machine.

A simulation speed-up: many simulated clients on one machine running the same
judge model would otherwise each generate the same greedy reply to the same
question. Nothing here changes a reward; a client without the file (or whose
file fails) generates the reply itself and gets the same one.

Contract:

* Keys. A row is keyed by ``(judge, max_new_tokens, domain, question)``
  (:data:`Key`, built by :func:`reply_key`). ``judge`` is
  :func:`judge_identity` (the resolved model folder, a digest of its files'
  names, sizes and modification times, of the prompt the model sees, and of the
  torch and transformers versions) followed by the torch thread count in effect.
  Judges that differ in any of these never share a row.
* Values. A row holds the model's decoded reply, so what a client reads is
  exactly what it would have generated. The reader extracts the answer from it;
  a reply without a number is stored like any other and read back as "no
  answer".
* Lookup order is the evaluator's business: this module knows nothing of an
  in-memory cache or the model; ``ModelBasedEvaluator`` decides when to look
  here and when to generate.
* Claims. A row whose reply is NULL is a claim: its owner (``host:pid:
  process:instance``) is generating the reply and others :meth:`~SharedReplyCache.wait`
  for it rather than generate it too. :meth:`~SharedReplyCache.claim` is called
  with the caller's model lock held and answers ``("done", reply)``,
  ``("mine", None)`` or ``("busy", None)``. A claim is abandoned, and then
  taken over by the next claimer, when its owner process has gone (same host:
  its pid is not running or is a zombie, or it is our pid but an earlier
  process), when its owner instance meets it again while holding the model lock
  (only a generation under that lock fills it: that generation failed), or
  when it is older than ``claim_timeout`` seconds. An owner whose generation
  fails :meth:`~SharedReplyCache.release`\\ s its claim.
* Failures. Any method but :meth:`~SharedReplyCache.release` may raise
  ``sqlite3.Error``; the caller then generates without the cache (a reply that
  cannot be stored is still used). A claim that cannot be released expires
  after ``claim_timeout``. Opening the file raises ``sqlite3.Error`` or
  ``OSError`` for an unusable path.

WAL mode and a busy timeout let several processes read and write at once; one
connection per instance, guarded by a lock, serves its threads.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Literal

from fedgrpo.tasks import user_message

log = logging.getLogger(__name__)

Key = tuple[str, int, str, str]  # (judge, max_new_tokens, domain, question)
_PROCESS_TOKEN = uuid.uuid4().hex[:12]  # tells this process from an earlier one that had the same pid
_KEY_WHERE = "judge = ? AND max_new_tokens = ? AND domain = ? AND question = ?"


def judge_identity(model_dir: Path, tokenizer: Any) -> str:
    """What makes a judge's replies what they are, for the cache's key.

    The resolved model folder and a digest of its files (names, sizes,
    modification times: a rebuilt folder is a new judge), of the prompt the
    model sees (chat template and user message format) and of the torch and
    transformers versions. ``max_new_tokens`` and the torch thread count are
    separate parts of the key (see :func:`reply_key`).
    """
    import torch
    import transformers

    from fedgrpo.models import chat_prompt_ids

    folder = Path(model_dir).resolve()
    digest = hashlib.sha256()
    for f in sorted(folder.iterdir()):
        if f.is_file():
            st = f.stat()
            digest.update(f"{f.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    probe = chat_prompt_ids(tokenizer, user_message("Calculate 12 + 30."))
    digest.update(json.dumps(probe).encode())
    digest.update(f"torch {torch.__version__} transformers {transformers.__version__}".encode())
    return f"{folder}@{digest.hexdigest()[:16]}"


def reply_key(judge: str, max_new_tokens: int, domain: str, question: str) -> Key:
    """The key of the judge's reply to question, with the torch thread count now in effect."""
    import torch

    return (f"{judge}/threads={torch.get_num_threads()}", max_new_tokens, domain, question)


def _pid_alive(pid: int) -> bool:
    """Whether process pid of this host runs (a zombie, dead but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc: trust kill
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


class SharedReplyCache:
    """One SQLite file of judge replies and claims (see the module docstring for the contract)."""

    SCHEMA = """CREATE TABLE IF NOT EXISTS judge_replies_v1 (
        judge TEXT NOT NULL,
        max_new_tokens INTEGER NOT NULL,
        domain TEXT NOT NULL,
        question TEXT NOT NULL,
        reply TEXT,           -- the model's decoded reply; NULL while claimed
        owner TEXT,           -- host:pid:process:instance of the claim or the writer
        updated_at REAL NOT NULL,
        PRIMARY KEY (judge, max_new_tokens, domain, question)
    )"""

    def __init__(
        self, path: Path, claim_timeout: float = 120.0, poll_seconds: float = 0.05, busy_timeout: float = 60.0
    ) -> None:
        self.path = Path(path)
        self.claim_timeout = claim_timeout
        self.poll_seconds = poll_seconds
        self._host = socket.gethostname()
        self.owner = f"{self._host}:{os.getpid()}:{_PROCESS_TOKEN}:{uuid.uuid4().hex[:8]}"
        self._db_lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # timeout= is SQLite's busy timeout
        self._db = sqlite3.connect(self.path, timeout=busy_timeout, isolation_level=None, check_same_thread=False)
        deadline = time.monotonic() + busy_timeout
        while True:  # first opening of a new file by several processes at once: retry while locked
            try:
                self._db.execute("PRAGMA journal_mode = WAL")
                self._db.execute("PRAGMA synchronous = NORMAL")
                self._db.execute(self.SCHEMA)
                break
            except sqlite3.OperationalError as err:
                if "locked" not in str(err) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def close(self) -> None:
        with self._db_lock:
            self._db.close()

    def _row(self, key: Key) -> tuple[str | None, str | None, float] | None:
        return self._db.execute(
            f"SELECT reply, owner, updated_at FROM judge_replies_v1 WHERE {_KEY_WHERE}", key
        ).fetchone()

    def _write(self, key: Key, reply: str | None) -> None:
        """Store reply (None: a claim) as this instance's (the caller holds the db lock)."""
        self._db.execute(
            "INSERT OR REPLACE INTO judge_replies_v1 VALUES (?, ?, ?, ?, ?, ?, ?)",
            (*key, reply, self.owner, time.time()),
        )

    def get(self, key: Key) -> str | None:
        """The stored reply, or None (absent, or claimed and not written yet)."""
        with self._db_lock:
            row = self._row(key)
        return None if row is None else row[0]

    def _abandoned(self, owner: str | None, updated_at: float, *, holding_model: bool) -> bool:
        """Whether a claim's owner no longer works on it (see the module docstring)."""
        if owner == self.owner and holding_model:
            return True  # ours, and only a generation under our model lock fills it: that one failed
        if time.time() - updated_at > self.claim_timeout:
            return True
        if owner == self.owner:
            return False  # another thread of ours generates it
        host, _, rest = (owner or "").partition(":")
        pid, _, rest = rest.partition(":")
        process = rest.partition(":")[0]
        if host != self._host or not pid.isdigit():
            return False
        if int(pid) == os.getpid():
            return process != _PROCESS_TOKEN  # an earlier process with our pid (a restarted container)
        return not _pid_alive(int(pid))

    def claim(self, key: Key) -> tuple[Literal["done", "mine", "busy"], str | None]:
        """Claim key to generate it: ("done", reply), ("mine", None) or ("busy", None).

        Call with the model lock held: a claim of this instance found here was
        abandoned (its generation failed), so it is taken up again.
        """
        with self._db_lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._row(key)
                if row is not None and row[0] is not None:
                    self._db.execute("COMMIT")
                    return "done", row[0]
                if row is not None and not self._abandoned(row[1], row[2], holding_model=True):
                    self._db.execute("COMMIT")
                    return "busy", None
                self._write(key, None)
                self._db.execute("COMMIT")
                return "mine", None
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def put(self, key: Key, reply: str) -> None:
        with self._db_lock:
            self._write(key, reply)

    def release(self, key: Key) -> None:
        """Drop this instance's claim on key (its generation failed); others then claim it."""
        try:
            with self._db_lock:
                self._db.execute(
                    f"DELETE FROM judge_replies_v1 WHERE {_KEY_WHERE} AND reply IS NULL AND owner = ?",
                    (*key, self.owner),
                )
        except sqlite3.Error as err:  # the claim then expires after claim_timeout
            log.warning("judge cache %s: claim not released (%s)", self.path, err)

    def wait(self, key: Key) -> str | None:
        """Wait for another's claim on key to be filled: its reply, or None once the claim is abandoned."""
        while True:
            with self._db_lock:
                row = self._row(key)
            if row is None:
                return None
            if row[0] is not None:
                return row[0]
            if self._abandoned(row[1], row[2], holding_model=False):
                return None
            time.sleep(self.poll_seconds)
