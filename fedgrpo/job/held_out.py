"""Held-out questions that no run trains on and no probe uses, and the proof that they are disjoint.

The federation's questions come from one deterministic bank per domain
(``bank_seed``, ``bank_size``: the orchestrator's and the reward clients'
settings). The server's auxiliary set D_p is a slice of that bank and the
training pool is the rest (``QuestionBank`` drops the auxiliary ids). Small
domains repeat texts (``add1`` has about 121 distinct questions), so a
held-out set drawn from another seed can still hold the training questions.

* ``normalise(text)``: lower-case, whitespace collapsed: two texts that
  differ only so are the same question.
* ``federation_sets(domains, bank_seed, bank_size, auxiliary_size)``: the
  training pool and the auxiliary set exactly as the orchestrator builds them.
* ``held_out_questions(domains, per_domain, exclude)``: per domain, the first
  ``per_domain`` questions of the held-out seed's stream whose normalised text
  is new (not in ``exclude``, not already taken). Deterministic; raises
  ``ValueError`` naming the domain when its question space cannot supply them.
* ``overlaps(held_out, training, auxiliary)``: pure; the number of distinct
  normalised texts each pair of sets shares.
* ``disjoint_held_out(...)``: all of it at once, refusing overlapping sets.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from fedgrpo.tasks import LabelledQuestion, Question, build_questions

HELD_OUT_SEED = 1_000_003  # far from any bank or run seed
# Items of the held-out stream searched per wanted question before a domain is declared too small.
SEARCH_FACTOR = 20


def normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def texts(questions: Iterable[Question]) -> set[str]:
    return {normalise(q.text) for q in questions}


def federation_defaults() -> tuple[int, int, int]:
    """The orchestrator's default bank_seed, bank_size and auxiliary_size (the reward clients' bank matches)."""
    from services.orchestrator.config import OrchestratorSettings

    fields = OrchestratorSettings.model_fields
    return fields["bank_seed"].default, fields["bank_size"].default, fields["auxiliary_size"].default


def federation_sets(
    domains: Sequence[str], bank_seed: int, bank_size: int, auxiliary_size: int
) -> tuple[list[Question], list[LabelledQuestion]]:
    """(training pool, auxiliary set) of these domains, built as the orchestrator builds them."""
    from services.orchestrator.auxiliary import auxiliary_items
    from services.orchestrator.questions import QuestionBank

    auxiliary = auxiliary_items(list(domains), auxiliary_size, bank_seed, bank_size)
    bank = QuestionBank(bank_seed, bank_size, frozenset(q.question_id for q in auxiliary))
    return [q for d in domains for q in bank.questions(d)], auxiliary


def held_out_questions(
    domains: Sequence[str], per_domain: int, exclude: set[str], seed: int = HELD_OUT_SEED
) -> list[LabelledQuestion]:
    if per_domain < 1:
        raise ValueError(f"per_domain: got {per_domain}, expected >= 1")
    taken = set(exclude)
    out: list[LabelledQuestion] = []
    for domain in domains:
        # reasoning-gym item i depends only on (seed, i): a longer stream extends a shorter one.
        stream = build_questions(domain, seed, per_domain * SEARCH_FACTOR)
        kept = []
        for q in stream:
            key = normalise(q.text)
            if key not in taken:
                taken.add(key)
                kept.append(q)
                if len(kept) == per_domain:
                    break
        if len(kept) < per_domain:
            raise ValueError(
                f"domains: {domain} has only {len(kept)} questions outside the training bank and auxiliary set "
                f"among {len(stream)} drawn, fewer than the {per_domain} held-out questions asked for; its "
                "question space is too small for a held-out set (use a larger domain, e.g. add2, sub2, chain3)"
            )
        out += kept
    return out


def overlaps(
    held_out: Iterable[Question], training: Iterable[Question], auxiliary: Iterable[Question]
) -> dict[str, int]:
    h, t, a = texts(held_out), texts(training), texts(auxiliary)
    return {"held_out_training": len(h & t), "held_out_auxiliary": len(h & a), "training_auxiliary": len(t & a)}


@dataclass(frozen=True)
class HeldOut:
    questions: list[LabelledQuestion]
    overlaps: dict[str, int]  # all 0: checked when built
    per_domain: dict[str, int]  # evaluation questions per domain

    @property
    def total(self) -> int:
        return len(self.questions)

    def to_json(self) -> dict:
        return {"questions_per_domain": self.per_domain, "questions": self.total, "overlaps": self.overlaps,
                "seed": HELD_OUT_SEED}


def disjoint_held_out(
    domains: Sequence[str], per_domain: int, bank_seed: int | None = None, bank_size: int | None = None,
    auxiliary_size: int | None = None,
) -> HeldOut:
    """Held-out questions disjoint (by normalised text) from the training pool and the auxiliary set.

    Unset bank and auxiliary settings take the orchestrator's defaults, which `fedgrpo run` and
    `fedgrpo experiment` leave as they are."""
    seed0, size0, aux0 = federation_defaults()
    training, auxiliary = federation_sets(
        domains, seed0 if bank_seed is None else bank_seed, size0 if bank_size is None else bank_size,
        aux0 if auxiliary_size is None else auxiliary_size,
    )
    questions = held_out_questions(domains, per_domain, texts(training) | texts(auxiliary))
    found = overlaps(questions, training, auxiliary)
    if any(found.values()):
        raise ValueError(f"domains: {list(domains)} give overlapping question sets {found}; expected none "
                         "(two domains share question texts)")
    counts = {d: sum(q.domain == d for q in questions) for d in domains}
    return HeldOut(questions, found, counts)
