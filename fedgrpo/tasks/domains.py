"""Task domains: named reasoning-gym generators and the questions they produce.

Contract
--------
* ``DOMAINS`` maps a domain name to a :class:`Domain` (reasoning-gym generator
  name, generator config kwargs, one-line description).  ``get_domain(name)``
  looks one up and raises ``KeyError`` listing the known names otherwise.
* ``build_questions(domain, seed, size)`` is deterministic: the same
  ``(domain, seed, size)`` always yields the same list of
  :class:`LabelledQuestion` in the same order, in any process.  This is how the
  server (which keeps only the text, via :func:`unlabelled`) and a reward
  client (which keeps the labelled entries) agree on a question set without
  exchanging labels.  Use a different seed for a held-out set.
* reasoning-gym item ``i`` of a dataset with seed ``s`` is drawn from
  ``Random(s + i)``, so raw seeds 0 and 1 give the same questions shifted by
  one.  We therefore pass reasoning-gym ``dataset_seed(domain, seed)`` (a
  48-bit sha256-derived number) instead of ``seed`` itself: different seeds
  (or domains) give effectively non-overlapping index windows.  Tiny domains
  still repeat *texts* (``add1``/``sub1``/``mul1`` have only 121 distinct
  questions), so a held-out set of those overlaps the training set by content.
* ``question_id(domain, text)`` is a stable 16-hex-digit id (sha256 of
  ``domain + "\\n" + text``).  Identical texts within a domain share an id (tiny
  domains such as ``add1`` have few distinct questions, so a dataset, and even
  a training and a held-out set, can repeat questions).
* Questions are frozen dataclasses; ``LabelledQuestion.entry`` is the raw
  reasoning-gym entry (``question``, ``answer``, ``metadata``), a fresh dict
  per ``build_questions`` call.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field
from typing import Any, Iterable

__all__ = [
    "Domain",
    "DOMAINS",
    "Question",
    "LabelledQuestion",
    "get_domain",
    "known_domains",
    "get_dataset",
    "question_id",
    "build_questions",
    "dataset_seed",
    "unlabelled",
    "index_by_id",
]


@dataclass(frozen=True)
class Domain:
    """A named task family: reasoning-gym generator + config kwargs."""

    name: str
    generator: str
    config: dict[str, Any] = field(hash=False)
    description: str = ""


def _arith(op: str, digits: int, terms: int = 2) -> dict[str, Any]:
    # basic_arithmetic without parentheses draws each term from randint(0, 10**digits),
    # so "1-digit" terms are 0..10 and "2-digit" terms 0..100.
    return dict(
        min_terms=terms,
        max_terms=terms,
        min_digits=digits,
        max_digits=digits,
        operators=(op,),
        allow_parentheses=False,
        allow_negation=False,
        format_style="simple",
        whitespace="single",
    )


_DOMAIN_LIST = [
    Domain("add1", "basic_arithmetic", _arith("+", 1), "1-digit addition, e.g. 'Calculate 3 + 7.'"),
    Domain("sub1", "basic_arithmetic", _arith("-", 1), "1-digit subtraction (results may be negative)"),
    Domain("mul1", "basic_arithmetic", _arith("*", 1), "1-digit multiplication, e.g. 'Calculate 4 * 6.'"),
    Domain("add2", "basic_arithmetic", _arith("+", 2), "2-digit addition, e.g. 'Calculate 37 + 58.'"),
    Domain("sub2", "basic_arithmetic", _arith("-", 2), "2-digit subtraction (results may be negative)"),
    Domain(
        "chain3",
        "chain_sum",
        dict(min_terms=3, max_terms=3, min_digits=1, max_digits=1, allow_negation=False),
        "3-term 1-digit chain sums with + and -, e.g. '... problem: 4 + 7 - 2 ='",
    ),
    Domain(
        "letter_counting",
        "letter_counting",
        dict(min_words=1, max_words=3),
        "count a letter's occurrences in a 1-3 word span",
    ),
    Domain(
        "leg_counting",
        "leg_counting",
        dict(min_animals=1, max_animals=1, min_instances=1, max_instances=3),
        "total legs of 1-3 animals of a single kind, e.g. '2 dogs'",
    ),
    Domain(
        "leg_counting2",
        "leg_counting",
        dict(min_animals=2, max_animals=2, min_instances=1, max_instances=2),
        "total legs of two kinds of animals, 1-2 of each",
    ),
]

DOMAINS: dict[str, Domain] = {d.name: d for d in _DOMAIN_LIST}


def get_domain(name: str) -> Domain:
    """Return the registered domain ``name``; ``KeyError`` listing known names otherwise."""
    try:
        return DOMAINS[name]
    except KeyError:
        raise KeyError(f"unknown domain {name!r}; known domains: {', '.join(sorted(DOMAINS))}") from None


def known_domains(names: list[str]) -> list[str]:
    """``names`` unchanged when every one is a built-in domain; ``ValueError`` naming the others otherwise."""
    unknown = [d for d in names if d not in DOMAINS]
    if unknown:
        raise ValueError(f"unknown built-in domain(s) {unknown}; known: {sorted(DOMAINS)} (`fedgrpo tasks`)")
    return names


def dataset_seed(domain: str, seed: int) -> int:
    """The reasoning-gym seed used for ``(domain, seed)``: 48 bits of sha256("domain\nseed")."""
    digest = hashlib.sha256(f"{domain}\n{int(seed)}".encode("utf-8")).digest()
    return int.from_bytes(digest[:6], "big")


@functools.lru_cache(maxsize=64)
def get_dataset(domain: str, seed: int, size: int):
    """The (cached) reasoning-gym dataset object for ``(domain, seed, size)``.

    Its reasoning-gym seed is ``dataset_seed(domain, seed)``.
    """
    import reasoning_gym

    d = get_domain(domain)
    kwargs = {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.config.items()}
    return reasoning_gym.create_dataset(d.generator, seed=dataset_seed(domain, seed), size=int(size), **kwargs)


@dataclass(frozen=True)
class Question:
    """An unlabelled question as the server sees it."""

    question_id: str
    domain: str
    text: str


@dataclass(frozen=True)
class LabelledQuestion(Question):
    """A question plus its reasoning-gym entry (with the answer), as a reward client holds it."""

    entry: dict[str, Any] = field(default_factory=dict, hash=False, repr=False)

    @property
    def answer(self) -> str:
        return str(self.entry["answer"])


def question_id(domain: str, text: str) -> str:
    """Stable short id: first 16 hex digits of sha256(domain + "\\n" + text)."""
    return hashlib.sha256(f"{domain}\n{text}".encode("utf-8")).hexdigest()[:16]


def build_questions(domain: str, seed: int, size: int) -> list[LabelledQuestion]:
    """Deterministically generate ``size`` labelled questions of ``domain`` with ``seed``."""
    if size < 0:
        raise ValueError(f"size must be >= 0, got {size}")
    if size == 0:
        get_domain(domain)
        return []
    ds = get_dataset(domain, int(seed), int(size))
    out = []
    for i in range(size):
        entry = ds[i]
        text = entry["question"]
        out.append(LabelledQuestion(question_id(domain, text), domain, text, entry))
    return out


def unlabelled(questions: Iterable[Question]) -> list[Question]:
    """Strip labels: plain :class:`Question` objects with the same id, domain and text."""
    return [Question(q.question_id, q.domain, q.text) for q in questions]


def index_by_id(questions: Iterable[LabelledQuestion]) -> dict[str, LabelledQuestion]:
    """Map question_id -> question (repeated texts collapse to one entry, same answer)."""
    return {q.question_id: q for q in questions}
