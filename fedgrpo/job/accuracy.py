"""`fedgrpo evaluate`: accuracy of any policy folder on a labelled file, with a chosen checker.

Contract
--------
``evaluate(rows, model_dir, checker, prompt_format, ...)`` puts each labelled
row's question to the policy (greedy, one answer, the model's chat template
with the :class:`fedgrpo.tasks.PromptFormat`: the instruction after the
question, the row's or the format's system prompt) through a rollout engine
(transformers or vLLM, the orchestrator's own) and scores the answer against
the row's label with the checker. An answer is right when its reward is at
least 0.5 (``CORRECT_THRESHOLD``: for the ``reasoning-gym`` checker 0.9 and
1.0 are right, 0.1 is not); a NaN reward ("cannot judge") is counted apart
and left out of the accuracy. Returns an :class:`Evaluation`: per-domain and
overall accuracy, and each question's outcome in file order.

The command reads the file with :func:`fedgrpo.data.files.read_rows`
(``labelled``), resolves ``--model`` like the services do (a built-in name or
a folder), prints one line per domain and the total, and with ``--json FILE``
writes every question's answer and reward. Bad input is one line naming the
flag: an unreadable file, an unknown checker, a model that does not load.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from fedgrpo.data.checkers import Checker, CheckerError, load_checker
from fedgrpo.data.files import Columns, DataFileError, Row, read_rows
from fedgrpo.tasks import CORRECT_THRESHOLD, PromptFormat, question_id

__all__ = ["Evaluation", "Outcome", "evaluate", "main"]


@dataclass(frozen=True)
class Outcome:
    question: str
    domain: str
    answer: str
    reward: float  # NaN: the checker could not judge it

    @property
    def right(self) -> bool:
        return not math.isnan(self.reward) and self.reward >= CORRECT_THRESHOLD


@dataclass(frozen=True)
class Evaluation:
    outcomes: list[Outcome]
    per_domain: dict[str, float] = field(default_factory=dict)  # accuracy over the judged questions
    overall: float = math.nan
    cannot_judge: int = 0


def summarise(outcomes: list[Outcome]) -> Evaluation:
    judged = [o for o in outcomes if not math.isnan(o.reward)]
    per_domain: dict[str, list[bool]] = {}
    for o in judged:
        per_domain.setdefault(o.domain, []).append(o.right)
    return Evaluation(
        outcomes,
        {d: sum(v) / len(v) for d, v in sorted(per_domain.items())},
        sum(o.right for o in judged) / len(judged) if judged else math.nan,
        len(outcomes) - len(judged),
    )


def evaluate(
    rows: list[Row], model_dir: Path, checker: Checker, prompt_format: PromptFormat, max_tokens: int = 48,
    backend: str = "transformers", device: str = "cpu", dtype: str = "float32", batch: int = 32,
    default_domain: str = "",
) -> Evaluation:
    from fedgrpo.local_answers import answer_rows
    from fedgrpo.services.orchestrator.rollout import SamplingSettings

    greedy = SamplingSettings(n=1, temperature=0.0, top_p=1.0, max_tokens=max_tokens, seed=0)
    outcomes: list[Outcome] = []
    for answered in answer_rows(rows, model_dir, prompt_format, greedy, backend=backend, device=device, dtype=dtype,
                                batch=batch):
        for row, samples in answered:
            domain = row.domain or default_domain
            text = samples[0].text
            reward = checker(text, row.answer or "", question=row.question, domain=domain,
                             metadata=row.metadata, question_id=question_id(domain, row.question))
            outcomes.append(Outcome(row.question, domain, text, reward))
    return summarise(outcomes)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="fedgrpo evaluate",
        description="Accuracy of a policy on a labelled file: greedy answers, checked against each row's label.",
    )
    parser.add_argument("--dataset", type=Path, required=True,
                        help="labelled .jsonl, .csv, .parquet or `datasets` folder (question, answer[, domain])")
    parser.add_argument("--model", required=True,
                        help="a policy folder (e.g. a run's exported model) or a built-in model name")
    parser.add_argument("--checker", default="exact",
                        help="exact, numeric, choice, regex, math, reasoning-gym, or module:function (default exact)")
    parser.add_argument("--checker-tolerance", type=float, default=1e-6, help="the numeric checker's tolerance")
    parser.add_argument("--instruction", default="",
                        help="text after each question (the built-in domains use 'Answer with just the number.')")
    parser.add_argument("--system", default=None, help="system prompt (a row's own `system` wins)")
    parser.add_argument("--max-tokens", type=int, default=48, help="longest answer in tokens (default 48)")
    parser.add_argument("--limit", type=int, default=0, help="evaluate only the first N rows (default: all)")
    parser.add_argument("--backend", choices=["transformers", "vllm"], default="transformers")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16")
    parser.add_argument("--cache-dir", type=Path, default=Path(".cache/models"), help="where built-in models live")
    parser.add_argument("--question-column", default=Columns.question)
    parser.add_argument("--answer-column", default=Columns.answer)
    parser.add_argument("--domain-column", default=Columns.domain)
    parser.add_argument("--json", type=Path, default=None, help="write every question's answer and reward here")
    args = parser.parse_args(argv)

    def fail(flag: str, problem: object) -> None:
        raise SystemExit(f"fedgrpo evaluate: {flag}: {problem}")

    if args.max_tokens < 1:
        fail("--max-tokens", f"got {args.max_tokens}, expected at least 1")
    try:
        checker = load_checker(args.checker, args.checker_tolerance)
    except CheckerError as err:
        fail("--checker", err)
    columns = Columns(question=args.question_column, answer=args.answer_column, domain=args.domain_column)
    try:
        rows = read_rows(args.dataset, columns, labelled=True)
    except DataFileError as err:
        fail("--dataset", err)
    rows = rows[: args.limit] if args.limit > 0 else rows
    from fedgrpo.models import resolve_model

    try:
        model_dir = resolve_model(args.model, args.cache_dir)
    except ValueError as err:
        fail("--model", err)
    started = time.monotonic()
    result = evaluate(
        rows, model_dir, checker, PromptFormat(instruction=args.instruction, system=args.system),
        args.max_tokens, args.backend, args.device, args.dtype, default_domain=args.dataset.stem,
    )
    print(f"{args.dataset}: {len(result.outcomes)} questions, model {model_dir}, checker {checker.name} "
          f"({time.monotonic() - started:.1f}s)")
    counts: dict[str, int] = {}
    for o in result.outcomes:
        counts[o.domain] = counts.get(o.domain, 0) + 1
    for domain, accuracy in result.per_domain.items():
        print(f"  {domain:18s} {accuracy:.3f}  ({counts[domain]} questions)")
    line = f"  {'all':18s} {result.overall:.3f}"
    print(line + (f"  ({result.cannot_judge} the checker could not judge, left out)" if result.cannot_judge else ""))
    if args.json is not None:
        def number(x: float) -> float | None:  # JSON has no NaN: "could not judge" is null
            return None if math.isnan(x) else x

        args.json.write_text(json.dumps({
            "dataset": str(args.dataset), "model": str(model_dir), "checker": checker.name,
            "per_domain": result.per_domain, "overall": number(result.overall), "cannot_judge": result.cannot_judge,
            "questions": [asdict(o) | {"reward": number(o.reward), "right": o.right} for o in result.outcomes],
        }, indent=2))
    sys.stdout.flush()
