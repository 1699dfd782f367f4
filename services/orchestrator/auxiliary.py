"""The server's labelled auxiliary set D_p and the probes built from it.

``auxiliary_items_from_file(path, size)`` takes them from a labelled file
of the server's own instead (question, answer, domain; read like every data
file, :func:`fedgrpo.data.files.read_rows`): its distinct questions, at most
``size`` spread evenly over its domains in file order (a row without a
domain belongs to the file's stem). ``auxiliary_items(domains, size,
bank_seed, bank_size)`` takes ``size``
distinct labelled items spread evenly over the domains from the *end* of the
federation's question bank: the same distribution the clients hold data of
(so an expert can judge them), a slice training never samples
(``QuestionBank`` excludes these ids). The probes built on them
(candidates of known correctness, shaped like training work) are in
``probes.py``. A client is probed through the same Score call it serves in
training, so how well it *judges* these is what the server learns.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from fedgrpo.data.files import deduplicate, read_rows
from fedgrpo.tasks import LabelledQuestion, build_questions, question_id


def auxiliary_items_from_file(path: Path, size: int) -> list[LabelledQuestion]:
    rows, _ = deduplicate(read_rows(path, labelled=True))
    by_domain: dict[str, list[LabelledQuestion]] = {}
    for row in rows:
        domain = row.domain or Path(path).stem
        entry = {"question": row.question, "answer": row.answer, "metadata": dict(row.metadata)}
        by_domain.setdefault(domain, []).append(LabelledQuestion(question_id(domain, row.question), domain,
                                                                 row.question, entry))
    items: list[LabelledQuestion] = []
    per, extra = divmod(size, len(by_domain))
    for i, (domain, questions) in enumerate(by_domain.items()):
        items += questions[: per + (i < extra)]
    return items


def auxiliary_items(domains: Sequence[str], size: int, bank_seed: int, bank_size: int) -> list[LabelledQuestion]:
    if size < len(domains):
        raise ValueError(f"size: {size} auxiliary items cannot cover {len(domains)} domains")
    per, extra = divmod(size, len(domains))
    items: list[LabelledQuestion] = []
    for i, domain in enumerate(domains):
        want = per + (i < extra)
        # Small domains repeat questions (add1 has ~121): keep distinct ones.
        unique = {q.question_id: q for q in reversed(build_questions(domain, bank_seed, bank_size))}
        items += list(unique.values())[:want]
    return items
