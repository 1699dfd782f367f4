"""Evaluators: how a reward client turns candidate answers into rewards.

An evaluator declares its kind and reward range, says whether it can judge a
question, and scores candidates: ``score(domain, question, candidates)``
returns one float per candidate in ``[reward_min, reward_max]``. Evaluators
are pluggable; the client asks each in turn and the first that can judge a
question scores it. Which one was used never leaves the client.

Two kinds exist (FedGRPO's AE and ME), in three evaluators:

* :class:`AnswerBasedEvaluator` checks answers against the client's private
  labels with its checker (:mod:`fedgrpo.data.checkers`): exact, but only
  for the questions it holds. A question is matched by its normalised text
  (:func:`fedgrpo.data.files.normalise`); of several labelled rows with that
  text, the one of the asked domain wins, else the first. Its labels come
  from a file (``--labels``) or from the built-in domains' bank
  (``--domains``, scored by the ``reasoning-gym`` checker).
* :class:`ModelBasedEvaluator` judges any question with the client's own small
  local model: weak and noisy, but it can always judge. It is also the only
  evaluator of a client in ground-truth-free mode and of a client that holds
  no domain. Clients of one machine running the same judge may share its
  replies through a SQLite file (:mod:`fedgrpo.services.reward_client.judge_cache`,
  a simulation speed-up).
* :class:`RewardModelEvaluator` (also model-based) scores each (question,
  candidate) pair with the organisation's own reward model, a Hugging Face
  sequence-classification folder: the sigmoid of its one logit (or the
  softmax probability of label 1 of two) is the reward in [0, 1].

Both answer rewards in [0, 1]: the built-in domains and the judge on the
same scale (0.9 * correct + 0.1 * concise), a file's checker as it scores
(see :mod:`fedgrpo.data.checkers`); NaN for a candidate means "cannot
judge" it.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Protocol

from fedgrpo.data.checkers import Checker, load_checker
from fedgrpo.data.files import Row, normalise
from fedgrpo.tasks import (
    CORRECT_WEIGHT,
    FORMAT_WEIGHT,
    REWARD_MAX,
    REWARD_MIN,
    build_questions,
    extract_answer,
    is_concise,
    user_message,
)
from fedgrpo.v1 import common_pb2

from .judge_cache import Key, SharedReplyCache, judge_identity, reply_key

log = logging.getLogger(__name__)
_MISSING = object()  # not in the LRU (None is a cached "no answer")


class Evaluator(Protocol):
    kind: int  # common_pb2.EvaluatorKind
    reward_min: float
    reward_max: float

    def can_judge(self, domain: str, question: str) -> bool: ...

    def score(self, domain: str, question: str, candidates: list[str], question_id: str = "") -> list[float]: ...


class AnswerBasedEvaluator:
    """Checks answers against the client's private labels (AE).

    Holds labelled rows keyed by normalised question text and scores each
    candidate with ``checker``; the labels never leave it.
    """

    kind = common_pb2.EVALUATOR_KIND_ANSWER_BASED
    reward_min = REWARD_MIN
    reward_max = REWARD_MAX

    def __init__(self, rows: list[Row], checker: Checker) -> None:
        self.checker = checker
        self._rows: dict[str, list[Row]] = {}
        self.repeated = 0  # rows whose question and domain an earlier row already had (first label kept)
        for row in rows:
            if row.answer is None:
                raise ValueError(f"{row.where or row.question!r}: a labelled row needs an answer")
            same = self._rows.setdefault(normalise(row.question), [])
            if any(other.domain == row.domain for other in same):
                self.repeated += 1
                continue
            same.append(row)

    @classmethod
    def from_bank(cls, domains: list[str], bank_seed: int, bank_size: int) -> AnswerBasedEvaluator:
        """The built-in domains' labelled bank, scored by each domain's own reasoning-gym check."""
        rows = [
            Row(q.text, q.answer, domain, metadata=q.entry.get("metadata", {}), where=f"{domain} bank")
            for domain in domains
            for q in build_questions(domain, bank_seed, bank_size)
        ]
        return cls(rows, load_checker("reasoning-gym"))

    def __len__(self) -> int:
        return sum(len(rows) for rows in self._rows.values())

    def rows(self) -> list[Row]:
        """Its labelled rows (for the client's own local training; they never leave it)."""
        return [row for rows in self._rows.values() for row in rows]

    @property
    def domains(self) -> list[str]:
        """The domains its rows name, sorted."""
        return sorted({row.domain for rows in self._rows.values() for row in rows if row.domain})

    def can_judge(self, domain: str, question: str) -> bool:
        return normalise(question) in self._rows

    def score(self, domain: str, question: str, candidates: list[str], question_id: str = "") -> list[float]:
        rows = self._rows[normalise(question)]
        row = next((r for r in rows if r.domain == domain), rows[0])
        return [
            self.checker(
                c, row.answer, question=row.question, domain=row.domain or domain, metadata=row.metadata,
                question_id=question_id,
            )
            for c in candidates
        ]


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

    With ``shared_cache`` (a SQLite file, see :mod:`.judge_cache`) the model's
    replies are also shared with the other clients of the machine that run the
    same judge: lookups go to the in-memory LRU, then to the shared file, and
    only then to the model; a fresh reply goes to the shared file and its
    answer to the LRU. While one client generates a reply, the others asking
    for the same question wait for it instead of generating it again. If the
    shared file fails (an SQLite error) the evaluator logs it and generates
    without it. ``generations`` counts real model calls only (taking
    ``generate_seconds``); ``shared_hits`` counts replies taken from the
    shared file.

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
        self.judge_id = judge_identity(self.model_dir, self.tokenizer)  # the shared cache's key
        self.shared_cache = SharedReplyCache(Path(shared_cache)) if shared_cache is not None else None

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

    def _shared_key(self, domain: str, question: str) -> Key:
        return reply_key(self.judge_id, self.max_new_tokens, domain, question)

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

    def score(self, domain: str, question: str, candidates: list[str], question_id: str = "") -> list[float]:
        own = self.own_answer(domain, question)
        rewards = []
        for c in candidates:
            right = own is not None and extract_answer(c) == own
            r = CORRECT_WEIGHT * float(right) + FORMAT_WEIGHT * float(is_concise(c))
            rewards.append(round(min(REWARD_MAX, max(REWARD_MIN, r)), 12))
        return rewards


class RewardModelEvaluator:
    """Scores (question, candidate) pairs with the client's own reward model (model-based).

    ``model_dir`` is a Hugging Face folder of a ``*ForSequenceClassification``
    model with one or two labels; a folder whose classification head would be
    newly initialised (a causal LM, a base model) is refused with
    ``ValueError``, as is a folder that does not load. Rewards: sigmoid of the
    single logit, or the probability of label 1 of two, in [0, 1]. Question
    and candidate go in as a text pair, truncated to ``max_length`` tokens.
    CPU, eval mode, one forward per Score call under a lock.
    """

    kind = common_pb2.EVALUATOR_KIND_MODEL_BASED
    reward_min = REWARD_MIN
    reward_max = REWARD_MAX

    def __init__(self, model_dir: Path, max_length: int = 512) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self._torch = torch
        try:
            model, info = AutoModelForSequenceClassification.from_pretrained(
                model_dir, output_loading_info=True, dtype=torch.float32
            )
            self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        except (OSError, ValueError, KeyError) as err:
            raise ValueError(f"{model_dir}: not a sequence-classification model folder that loads ({err})") from None
        if info.get("missing_keys"):
            raise ValueError(
                f"{model_dir}: has no sequence-classification head (weights {sorted(info['missing_keys'])[:3]} "
                "would be random): give a folder saved from a *ForSequenceClassification model"
            )
        if model.config.num_labels not in (1, 2):
            raise ValueError(f"{model_dir}: {model.config.num_labels} labels; a reward model has 1 (a score) or 2")
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        model.config.pad_token_id = self.tokenizer.pad_token_id
        self.model = model.eval()
        self.max_length = max_length
        # A folder trained by `fedgrpo reward-model train` says how it was fed: TRL passes no segment ids.
        self.token_type_ids = True
        from fedgrpo.reward_models.training import METADATA_FILE

        metadata = Path(model_dir) / METADATA_FILE
        if metadata.is_file():
            try:
                described = json.loads(metadata.read_text())
                self.token_type_ids = bool(described.get("token_type_ids", True))
                self.max_length = min(max_length, int(described.get("max_length", max_length)))
            except (ValueError, TypeError) as err:
                raise ValueError(f"{metadata}: not readable JSON ({err})") from None
        self._lock = threading.Lock()

    def can_judge(self, domain: str, question: str) -> bool:
        return True

    def score(self, domain: str, question: str, candidates: list[str], question_id: str = "") -> list[float]:
        torch = self._torch
        with self._lock, torch.no_grad():
            encoded = self.tokenizer(
                [question] * len(candidates), candidates, truncation=True, max_length=self.max_length,
                padding=True, return_tensors="pt", return_token_type_ids=None if self.token_type_ids else False,
            )
            logits = self.model(**encoded).logits.float()
            if logits.shape[-1] == 1:
                probability = torch.sigmoid(logits[:, 0])
            else:
                probability = torch.softmax(logits, dim=-1)[:, 1]
        span = self.reward_max - self.reward_min
        return [self.reward_min + span * float(p) for p in probability]
