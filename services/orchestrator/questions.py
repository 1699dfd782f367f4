"""The server's training questions: text only, never labels.

Two sources, one interface. Without a dataset, the built-in domains' bank:
the server and the clients build the same deterministic reasoning-gym bank
(same generators, seed and size); the server keeps each question's text and
drops its answer. With a dataset (``--dataset NAME=PATH``, see
``datasets.py``), that file's questions by domain. ``QuestionBank.sample(
tasks, step, count, seed, dataset)`` draws a step's questions
deterministically from (run seed, step), cycling through the run's tasks
(domains); ``prompt(question, dataset)`` is how one is put to the policy. The
auxiliary set's ids (``reserved``) are never training questions.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from functools import lru_cache

from fedgrpo.tasks import Question, build_questions, unlabelled, user_message

from .datasets import QuestionDataset


@lru_cache(maxsize=64)
def _domain_questions(domain: str, seed: int, size: int) -> tuple[Question, ...]:
    return tuple(unlabelled(build_questions(domain, seed, size)))


class QuestionBank:
    def __init__(
        self, bank_seed: int, bank_size: int, reserved: frozenset[str] = frozenset(),
        datasets: Mapping[str, QuestionDataset] | None = None,
    ) -> None:
        self.bank_seed = bank_seed
        self.bank_size = bank_size
        self.reserved = reserved  # the auxiliary set's ids: never training questions
        self.datasets = datasets if datasets is not None else {}  # shared: imports appear at once

    def questions(self, domain: str, dataset: str = "") -> tuple[Question, ...]:
        if dataset:
            if dataset not in self.datasets:
                raise ValueError(
                    f"dataset {dataset!r} is not registered with this orchestrator (--dataset NAME=PATH); "
                    f"registered: {sorted(self.datasets)}"
                )
            pool = self.datasets[dataset].by_domain[domain]
        else:
            pool = _domain_questions(domain, self.bank_seed, self.bank_size)
        if not self.reserved:
            return pool
        kept = tuple(q for q in pool if q.question_id not in self.reserved)
        if not kept:
            where = f"dataset {dataset!r}" if dataset else "the bank (bank_size)"
            raise ValueError(f"every {domain} question of {where} is reserved for the auxiliary set")
        return kept

    def sample(self, tasks: Sequence[str], step: int, count: int, seed: int, dataset: str = "") -> list[Question]:
        rng = random.Random(f"{seed}:{step}")
        offset = rng.randrange(len(tasks))
        return [
            rng.choice(self.questions(tasks[(offset + i) % len(tasks)], dataset)) for i in range(count)
        ]

    def prompt(self, question: Question, dataset: str = "") -> tuple[str, str | None]:
        """(user text, system prompt or None) of a question this bank gave."""
        if dataset:
            return self.datasets[dataset].prompt(question)
        return user_message(question.text), None
