"""Evaluators: how a reward client turns candidate answers into rewards.

An evaluator declares its kind and reward range, says whether it can judge a
question, and scores candidates: ``score(domain, question, candidates)``
returns one float per candidate in ``[reward_min, reward_max]``. Evaluators
are pluggable; the client asks each in turn and the first that can judge a
question scores it. Which one was used never leaves the client.

Two kinds exist (FedGRPO's AE and ME):

* :class:`AnswerBasedEvaluator` checks answers against the client's private
  ground truth: exact, but only for the questions it holds.
* :class:`ModelBasedEvaluator` judges any question with the client's own small
  local model: weak and noisy, but it can always judge. It is also the only
  evaluator of a client in ground-truth-free mode and of a client that holds
  no domain. Clients of one machine running the same judge may share its
  replies through a :class:`SharedReplyCache` file (a simulation speed-up).

Both score on the same scale (0.9 * correct + 0.1 * concise), so the
orchestrator treats their rewards alike.
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
from collections import OrderedDict
from pathlib import Path
from typing import Literal, Protocol

from fedgrpo.tasks import (
    CORRECT_WEIGHT,
    FORMAT_WEIGHT,
    REWARD_MAX,
    REWARD_MIN,
    build_questions,
    extract_answer,
    is_concise,
    score_completion,
    user_message,
)
from fedgrpo.v1 import common_pb2

log = logging.getLogger(__name__)
_MISSING = object()  # not in the LRU (None is a cached "no answer")


class Evaluator(Protocol):
    kind: int  # common_pb2.EvaluatorKind
    reward_min: float
    reward_max: float

    def can_judge(self, domain: str, question: str) -> bool: ...

    def score(self, domain: str, question: str, candidates: list[str]) -> list[float]: ...


class AnswerBasedEvaluator:
    """Checks answers against the client's private ground truth (AE).

    Holds the labelled entries of its domains, keyed by (domain, question
    text), and scores with the task's own verifier.
    """

    kind = common_pb2.EVALUATOR_KIND_ANSWER_BASED
    reward_min = REWARD_MIN
    reward_max = REWARD_MAX

    def __init__(self, domains: list[str], bank_seed: int, bank_size: int) -> None:
        self._entries: dict[tuple[str, str], dict] = {}
        for domain in domains:
            for q in build_questions(domain, bank_seed, bank_size):
                self._entries[(domain, q.text)] = q.entry

    def __len__(self) -> int:
        return len(self._entries)

    def can_judge(self, domain: str, question: str) -> bool:
        return (domain, question) in self._entries

    def score(self, domain: str, question: str, candidates: list[str]) -> list[float]:
        entry = self._entries[(domain, question)]
        return [score_completion(domain, entry, c) for c in candidates]


class ModelBasedEvaluator:
    """Judges any question with the client's own small local model (ME).

    For a question it first works out its own answer: greedy generation of the
    local model on the question's chat prompt (the same user message the
    policy sees), then the last number of that reply (``extract_answer``).
    That answer is cached per (domain, question) in a bounded LRU, so the
    candidates of one question, and later calls on it, cost one generation.
    A candidate's reward is ``0.9 * (its extracted number == own answer) +
    0.1 * concise``, the answer-based scale. When the model's own reply has
    no number it cannot judge correctness: every candidate gets only its
    format reward. Greedy decoding makes the rewards deterministic.

    With ``shared_cache`` (a SQLite file, see :class:`SharedReplyCache`) the
    model's replies are also shared with the other clients of the machine that
    run the same judge: lookups go to the in-memory LRU, then to the shared
    file, and only then to the model; a fresh reply is stored in both. While
    one client generates a reply, the others asking for the same question wait
    for it instead of generating it again. ``generations`` counts real model
    calls only; ``shared_hits`` counts replies taken from the shared file.

    The model lives on the CPU in eval mode; one lock guards the model (one
    generation at a time), another the LRU and counters (gRPC calls arrive
    from a thread pool). torch and transformers are imported only when an
    instance is built.
    """

    kind = common_pb2.EVALUATOR_KIND_MODEL_BASED
    reward_min = REWARD_MIN
    reward_max = REWARD_MAX

    def __init__(
        self,
        model_dir: Path,
        max_new_tokens: int = 24,
        cache_size: int = 4096,
        shared_cache: Path | None = None,
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if max_new_tokens < 1 or cache_size < 1:
            raise ValueError(f"max_new_tokens ({max_new_tokens}) and cache_size ({cache_size}) must be >= 1")
        self._torch = torch
        self.model_dir = Path(model_dir)
        self.max_new_tokens = max_new_tokens
        self.cache_size = cache_size
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=torch.float32).to("cpu").eval()
        pad = self.tokenizer.pad_token_id
        self._pad = pad if pad is not None else self.tokenizer.eos_token_id
        self._lock = threading.Lock()  # the LRU and the counters
        self._model_lock = threading.Lock()  # the model and tokenizer: one generation at a time
        self._answers: OrderedDict[tuple[str, str], str | None] = OrderedDict()
        self.generations = 0  # model calls so far (misses of both caches)
        self.generate_seconds = 0.0  # time spent in them
        self.shared_hits = 0  # replies taken from the shared cache
        self.judge_id = self._judge_identity()
        self.shared_cache = SharedReplyCache(Path(shared_cache)) if shared_cache is not None else None

    def _judge_identity(self) -> str:
        """What makes this judge's replies what they are, for the shared cache's key.

        The resolved model folder and a digest of its files (names, sizes,
        modification times: a rebuilt folder is a new judge), of the prompt the
        model sees (chat template and user message format) and of the torch and
        transformers versions. ``max_new_tokens`` and the torch thread count
        are separate parts of the key.
        """
        import transformers

        from fedgrpo.models import chat_prompt_ids

        folder = self.model_dir.resolve()
        digest = hashlib.sha256()
        for f in sorted(folder.iterdir()):
            if f.is_file():
                st = f.stat()
                digest.update(f"{f.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        probe = chat_prompt_ids(self.tokenizer, user_message("Calculate 12 + 30."))
        digest.update(json.dumps(probe).encode())
        digest.update(f"torch {self._torch.__version__} transformers {transformers.__version__}".encode())
        return f"{folder}@{digest.hexdigest()[:16]}"

    def can_judge(self, domain: str, question: str) -> bool:
        return True

    def _generate(self, question: str) -> str:
        """The local model's greedy reply to the question (decoded new tokens)."""
        from fedgrpo.models import chat_prompt_ids

        ids = self._torch.tensor([chat_prompt_ids(self.tokenizer, user_message(question))])
        with self._torch.no_grad():
            out = self.model.generate(
                input_ids=ids,
                attention_mask=self._torch.ones_like(ids),
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                max_new_tokens=self.max_new_tokens,
                pad_token_id=self._pad,
            )
        return self.tokenizer.decode(out[0, ids.shape[1]:].tolist(), skip_special_tokens=True)

    def _remembered(self, key: tuple[str, str]) -> str | None | object:
        """The LRU's answer for key (refreshed), or _MISSING."""
        with self._lock:
            if key not in self._answers:
                return _MISSING
            self._answers.move_to_end(key)
            return self._answers[key]

    def _remember(self, key: tuple[str, str], answer: str | None) -> str | None:
        with self._lock:
            self._answers[key] = answer
            self._answers.move_to_end(key)
            if len(self._answers) > self.cache_size:
                self._answers.popitem(last=False)
        return answer

    def _timed_generate(self, question: str) -> str:
        """One real model call (the caller holds the model lock)."""
        started = time.monotonic()
        reply = self._generate(question)
        with self._lock:
            self.generate_seconds += time.monotonic() - started
            self.generations += 1
        return reply

    def _shared_key(self, domain: str, question: str) -> tuple[str, int, str, str]:
        return (f"{self.judge_id}/threads={self._torch.get_num_threads()}", self.max_new_tokens, domain, question)

    def own_answer(self, domain: str, question: str) -> str | None:
        """The number the local model answers the question with (cached), or None."""
        key = (domain, question)
        answer = self._remembered(key)
        if answer is not _MISSING:
            return answer
        if self.shared_cache is not None:
            try:
                return self._own_answer_shared(key)
            except sqlite3.Error as err:  # the shared file is a speed-up only: answer without it
                log.warning("judge cache %s failed (%s): generating without it", self.shared_cache.path, err)
        with self._model_lock:
            answer = self._remembered(key)
            if answer is _MISSING:
                answer = self._remember(key, extract_answer(self._timed_generate(key[1])))
        return answer

    def _own_answer_shared(self, key: tuple[str, str]) -> str | None:
        shared, skey = self.shared_cache, self._shared_key(*key)
        while True:
            reply = shared.get(skey)  # without the model lock: another question may be generating
            if reply is None:
                with self._model_lock:
                    answer = self._remembered(key)
                    if answer is not _MISSING:
                        return answer
                    state, reply = shared.claim(skey)
                    if state == "mine":
                        try:
                            reply = self._timed_generate(key[1])
                        except BaseException:
                            shared.release(skey)
                            raise
                        try:
                            shared.put(skey, reply)
                        except sqlite3.Error as err:
                            log.warning("judge cache %s: reply not stored (%s)", shared.path, err)
                        return self._remember(key, extract_answer(reply))
                if state == "busy":  # another client generates it: wait without the model lock
                    reply = shared.wait(skey)
                    if reply is None:
                        continue  # the claim was abandoned: claim it again
            with self._lock:
                self.shared_hits += 1
            return self._remember(key, extract_answer(reply))

    def score(self, domain: str, question: str, candidates: list[str]) -> list[float]:
        own = self.own_answer(domain, question)
        rewards = []
        for c in candidates:
            right = own is not None and extract_answer(c) == own
            r = CORRECT_WEIGHT * float(right) + FORMAT_WEIGHT * float(is_concise(c))
            rewards.append(round(min(REWARD_MAX, max(REWARD_MIN, r)), 12))
        return rewards


_Key = tuple[str, int, str, str]  # (judge, max_new_tokens, domain, question)
_PROCESS_TOKEN = uuid.uuid4().hex[:12]  # tells this process from an earlier one that had the same pid


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
    """The judge's own replies, shared through one SQLite file by the clients of a machine.

    A simulation speed-up: many simulated clients on one machine running the
    same judge model would otherwise each generate the same greedy reply to the
    same question. A row is keyed by ``(judge, max_new_tokens, domain,
    question)``, where ``judge`` identifies the model (see
    ``ModelBasedEvaluator._judge_identity``), and holds the model's decoded
    reply, so what a client reads is exactly what it would have generated (the
    answer is extracted from it by the reader; a reply without a number is
    stored like any other and read back as "no answer"). A row whose reply is
    NULL is a claim: its owner is generating it, and others wait for it
    rather than generate it too. A claim is abandoned when its owner process
    has gone (same host), the owner itself takes it up again, or it is older
    than ``claim_timeout`` seconds; then someone else claims it.

    WAL mode and a busy timeout let several processes read and write at once;
    one connection per instance, guarded by a lock, serves its threads.
    """

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
        self._db = sqlite3.connect(self.path, timeout=busy_timeout, isolation_level=None, check_same_thread=False)
        deadline = time.monotonic() + busy_timeout
        while True:  # first opening of a new file by several processes at once: retry while locked
            try:
                self._db.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
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

    def _row(self, key: _Key) -> tuple[str | None, str | None, float] | None:
        return self._db.execute(
            "SELECT reply, owner, updated_at FROM judge_replies_v1 "
            "WHERE judge = ? AND max_new_tokens = ? AND domain = ? AND question = ?",
            key,
        ).fetchone()

    def get(self, key: _Key) -> str | None:
        """The stored reply, or None (absent, or claimed and not written yet)."""
        with self._db_lock:
            row = self._row(key)
        return None if row is None else row[0]

    def _abandoned(self, owner: str | None, updated_at: float, *, holding_model: bool) -> bool:
        """Whether a claim's owner no longer works on it (see the class docstring)."""
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

    def claim(self, key: _Key) -> tuple[Literal["done", "mine", "busy"], str | None]:
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
                self._db.execute(
                    "INSERT OR REPLACE INTO judge_replies_v1 VALUES (?, ?, ?, ?, NULL, ?, ?)",
                    (*key, self.owner, time.time()),
                )
                self._db.execute("COMMIT")
                return "mine", None
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def put(self, key: _Key, reply: str) -> None:
        with self._db_lock:
            self._db.execute(
                "INSERT OR REPLACE INTO judge_replies_v1 VALUES (?, ?, ?, ?, ?, ?, ?)",
                (*key, reply, self.owner, time.time()),
            )

    def release(self, key: _Key) -> None:
        """Drop this instance's claim on key (its generation failed); others then claim it."""
        try:
            with self._db_lock:
                self._db.execute(
                    "DELETE FROM judge_replies_v1 WHERE judge = ? AND max_new_tokens = ? AND domain = ? "
                    "AND question = ? AND reply IS NULL AND owner = ?",
                    (*key, self.owner),
                )
        except sqlite3.Error as err:  # the claim then expires after claim_timeout
            log.warning("judge cache %s: claim not released (%s)", self.path, err)

    def wait(self, key: _Key) -> str | None:
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
