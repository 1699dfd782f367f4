"""The experiment's federation as files: each party reads only its own.

Contract
--------
``make_experiment_files(domains, holdings, folder, eval_questions,
auxiliary_size)`` writes, with :func:`fedgrpo.data.make.make_file` (what
`fedgrpo datasets make` does), under ``folder``:

* ``server/questions.jsonl``: the first ``QUESTIONS_PER_DOMAIN`` questions of
  each domain (seed 0), without answers: what the policy trains on;
* ``server/auxiliary.jsonl``: the first ``ceil(auxiliary_size / domains)``
  of each, labelled: the confidence graph's probes (the orchestrator never
  trains on them);
* ``client-K.jsonl``: client K's labels, the same questions of the domains
  it holds (none: no file, it judges with its model only);
* ``central.jsonl``: every domain's labels (centralised GRPO);
* ``evaluation.jsonl``: ``eval_questions`` per domain drawn with
  ``HELD_OUT_SEED``, none among the server's questions.

(The auxiliary file's row count is ``auxiliary_size`` of the result: give
it to the orchestrator's ``--auxiliary-size`` so that every row probes, and
so none of them is a training question.)

Returns :class:`ExperimentFiles`: the paths, the evaluation rows, and the
held-out record (per-domain counts, the seed, and the distinct normalised
texts each pair of evaluation, training pool and auxiliary set shares: all
zero, or a ``ValueError`` says which). Deterministic: the same arguments
write the same files, so a resumed experiment evaluates the same questions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fedgrpo.data.files import Row, normalise, read_rows
from fedgrpo.data.make import make_file
from fedgrpo.tasks import question_id

__all__ = ["HELD_OUT_SEED", "QUESTIONS_PER_DOMAIN", "ExperimentFiles", "make_experiment_files"]

HELD_OUT_SEED = 1_000_003  # far from any training or run seed

QUESTIONS_PER_DOMAIN = 1000  # the training pool per domain (what the orchestrator's built-in bank held)


@dataclass(frozen=True)
class ExperimentFiles:
    questions: Path
    auxiliary: Path
    auxiliary_size: int  # rows of the auxiliary file: the orchestrator's --auxiliary-size, so it probes them all
    central: Path
    labels: list[Path | None]  # labels[k]: client k's file; None when it holds no domain
    evaluation: list[Row]
    held_out: dict


def make_experiment_files(
    domains: Sequence[str], holdings: Sequence[Sequence[str]], folder: Path, eval_questions: int,
    auxiliary_size: int = 100,
) -> ExperimentFiles:
    """Write the experiment's data files under ``folder`` (see the module docstring)."""
    questions = folder / "server" / "questions.jsonl"
    auxiliary = folder / "server" / "auxiliary.jsonl"
    make_file(domains, QUESTIONS_PER_DOMAIN, questions, labelled=False)
    probes = make_file(domains, math.ceil(auxiliary_size / len(domains)), auxiliary)
    labels: list[Path | None] = []
    for k, held in enumerate(holdings):
        labels.append(folder / f"client-{k}.jsonl" if held else None)
        if held:
            make_file(held, QUESTIONS_PER_DOMAIN, folder / f"client-{k}.jsonl")
    central = folder / "central.jsonl"
    make_file(domains, QUESTIONS_PER_DOMAIN, central)
    evaluation = folder / "evaluation.jsonl"
    make_file(domains, eval_questions, evaluation, seed=HELD_OUT_SEED, exclude=[questions])
    rows = read_rows(evaluation, labelled=True)
    reserved = {question_id(r.domain or "", r.question): normalise(r.question) for r in read_rows(auxiliary)}
    probed = set(reserved.values())
    training = {normalise(r.question) for r in read_rows(questions)
                if question_id(r.domain or "", r.question) not in reserved}
    held_out = {normalise(r.question) for r in rows}
    overlaps = {"held_out_training": len(held_out & training), "held_out_auxiliary": len(held_out & probed),
                "training_auxiliary": len(training & probed)}
    if any(overlaps.values()):
        raise ValueError(f"domains: {list(domains)} give overlapping question sets {overlaps}; expected none "
                         "(two domains share question texts)")
    per_domain = {d: sum(r.domain == d for r in rows) for d in domains}
    record = {"questions_per_domain": per_domain, "questions": len(rows), "overlaps": overlaps,
              "seed": HELD_OUT_SEED, "files": str(folder)}
    return ExperimentFiles(questions, auxiliary, probes, central, labels, rows, record)
