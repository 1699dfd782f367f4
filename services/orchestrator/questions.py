"""The server's training questions: text only, never labels.

In this single-machine simulation the server and the clients build the same
deterministic reasoning-gym bank (same generators, seed and size); the server
keeps each question's text and drops its answer, the clients keep the
labelled entries. ``QuestionBank.sample(step, ...)`` draws a step's questions
deterministically from (run seed, step), cycling through the run's tasks.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from functools import lru_cache

from fedgrpo.tasks import Question, build_questions, unlabelled


@lru_cache(maxsize=64)
def _domain_questions(domain: str, seed: int, size: int) -> tuple[Question, ...]:
    return tuple(unlabelled(build_questions(domain, seed, size)))


class QuestionBank:
    def __init__(self, bank_seed: int, bank_size: int, reserved: frozenset[str] = frozenset()) -> None:
        self.bank_seed = bank_seed
        self.bank_size = bank_size
        self.reserved = reserved  # the auxiliary set's ids: never training questions

    def questions(self, domain: str) -> tuple[Question, ...]:
        pool = _domain_questions(domain, self.bank_seed, self.bank_size)
        if not self.reserved:
            return pool
        kept = tuple(q for q in pool if q.question_id not in self.reserved)
        if not kept:
            raise ValueError(f"bank_size: every {domain} question of the bank is reserved for the auxiliary set")
        return kept

    def sample(self, tasks: Sequence[str], step: int, count: int, seed: int) -> list[Question]:
        rng = random.Random(f"{seed}:{step}")
        offset = rng.randrange(len(tasks))
        return [
            rng.choice(self.questions(tasks[(offset + i) % len(tasks)])) for i in range(count)
        ]
