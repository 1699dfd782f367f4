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
  evaluator of a client in ground-truth-free mode.

Both score on the same scale (0.9 * correct + 0.1 * concise), so the
orchestrator treats their rewards alike.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Protocol

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

    The model lives on the CPU in eval mode; one lock guards it and the cache
    (gRPC calls arrive from a thread pool). torch and transformers are
    imported only when an instance is built.
    """

    kind = common_pb2.EVALUATOR_KIND_MODEL_BASED
    reward_min = REWARD_MIN
    reward_max = REWARD_MAX

    def __init__(self, model_dir: Path, max_new_tokens: int = 24, cache_size: int = 4096) -> None:
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
        self._lock = threading.Lock()
        self._answers: OrderedDict[tuple[str, str], str | None] = OrderedDict()
        self.generations = 0  # model calls so far (cache misses)
        self.generate_seconds = 0.0  # time spent in them

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

    def own_answer(self, domain: str, question: str) -> str | None:
        """The number the local model answers the question with (cached), or None."""
        key = (domain, question)
        with self._lock:
            if key in self._answers:
                self._answers.move_to_end(key)
                return self._answers[key]
            started = time.monotonic()
            reply = self._generate(question)
            self.generate_seconds += time.monotonic() - started
            self.generations += 1
            answer = extract_answer(reply)
            self._answers[key] = answer
            if len(self._answers) > self.cache_size:
                self._answers.popitem(last=False)
            return answer

    def score(self, domain: str, question: str, candidates: list[str]) -> list[float]:
        own = self.own_answer(domain, question)
        rewards = []
        for c in candidates:
            right = own is not None and extract_answer(c) == own
            r = CORRECT_WEIGHT * float(right) + FORMAT_WEIGHT * float(is_concise(c))
            rewards.append(round(min(REWARD_MAX, max(REWARD_MIN, r)), 12))
        return rewards
