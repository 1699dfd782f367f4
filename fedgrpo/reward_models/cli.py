"""`fedgrpo reward-model`: a client builds its own reward model on its own machine.

    fedgrpo reward-model preferences --data LABELLED --model POLICY --out FILE.jsonl
    fedgrpo reward-model train --preferences FILE --base minilm --out DIR

``preferences`` samples candidates for each labelled question with a local
model, checks them with the client's checker and writes (question, chosen,
rejected) rows (:mod:`.preferences`). ``train`` trains a Bradley-Terry
reward model on such rows with TRL and writes a folder the reward client
serves with ``--reward-model DIR`` (:mod:`.training`). Bad input is one line
naming the flag, the file, the row and the field; nothing half-written stays.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fedgrpo.data.checkers import CheckerError, load_checker
from fedgrpo.data.files import Columns, DataFileError, read_rows

from .preferences import PreferenceColumns, make_preferences, read_preferences, write_preferences
from .training import MINILM, RewardModelError, TrainingSettings, resolve_backbone, train_reward_model

__all__ = ["main"]


def _fail(command: str, flag: str, problem: object) -> None:
    raise SystemExit(f"fedgrpo reward-model {command}: {flag}: {problem}")


def _preferences(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="fedgrpo reward-model preferences",
        description="Preference rows (question, chosen, rejected) from private labels: candidates sampled from a "
        "local model and checked against each label; right answers (or the label) chosen over wrong ones.",
    )
    parser.add_argument("--data", type=Path, required=True,
                        help="labelled .jsonl, .csv, .parquet or `datasets` folder (question, answer[, domain])")
    parser.add_argument("--model", required=True, help="the model that samples candidates (a folder or built-in name)")
    parser.add_argument("--out", type=Path, required=True, help="the preference file to write (.jsonl)")
    parser.add_argument("--checker", default="exact",
                        help="exact, numeric, choice, regex, math, reasoning-gym, or module:function (default exact)")
    parser.add_argument("--checker-tolerance", type=float, default=1e-6, help="the numeric checker's tolerance")
    parser.add_argument("--instruction", default="", help="text after each question when sampling")
    parser.add_argument("--system", default=None, help="system prompt when sampling (a row's own wins)")
    parser.add_argument("--samples", type=int, default=8, help="candidates sampled per question (default 8)")
    parser.add_argument("--pairs-per-question", type=int, default=2, help="at most this many rows per question")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1.0)")
    parser.add_argument("--max-tokens", type=int, default=48, help="longest candidate in tokens (default 48)")
    parser.add_argument("--limit", type=int, default=0, help="only the first N labelled rows (default: all)")
    parser.add_argument("--sample", type=int, default=0,
                        help="a random N of the labelled rows, drawn with --seed, in file order (default: all)")
    parser.add_argument("--backend", choices=["transformers", "vllm"], default="transformers")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    parser.add_argument("--cache-dir", type=Path, default=Path(".cache/models"), help="where built-in models live")
    args = parser.parse_args(argv)
    fail = lambda flag, problem: _fail("preferences", flag, problem)  # noqa: E731
    for flag, value in (("--samples", args.samples), ("--pairs-per-question", args.pairs_per_question),
                        ("--max-tokens", args.max_tokens)):
        if value < 1:
            fail(flag, f"got {value}, expected at least 1")
    if args.out.suffix.lower() != ".jsonl":
        fail("--out", f"{args.out}: preferences are written as JSON Lines: give a .jsonl path")
    try:
        checker = load_checker(args.checker, args.checker_tolerance)
    except CheckerError as err:
        fail("--checker", err)
    try:
        rows = read_rows(args.data, Columns(), labelled=True)
    except DataFileError as err:
        fail("--data", err)
    if args.limit > 0 and args.sample > 0:
        fail("--sample", "give --limit (the first N rows) or --sample (a random N), not both")
    rows = rows[: args.limit] if args.limit > 0 else rows
    if 0 < args.sample < len(rows):  # a file's rows often come a domain at a time: the first N hold one
        import random

        kept = set(random.Random(args.seed).sample(range(len(rows)), args.sample))
        rows = [row for i, row in enumerate(rows) if i in kept]
    from rich.progress import Progress

    from fedgrpo.models import resolve_model
    from fedgrpo.tasks import PromptFormat

    try:
        model_dir = resolve_model(args.model, args.cache_dir)
    except ValueError as err:
        fail("--model", err)
    with Progress(transient=True) as progress:
        task = progress.add_task("sampling candidates", total=len(rows))
        prefs, counts = make_preferences(
            rows, model_dir, checker, PromptFormat(instruction=args.instruction, system=args.system),
            samples=args.samples, max_pairs=args.pairs_per_question, max_tokens=args.max_tokens,
            temperature=args.temperature, backend=args.backend, device=args.device, dtype=args.dtype,
            seed=args.seed, progress=lambda n: progress.advance(task, n),
        )
    if not prefs:
        fail("--data", f"{args.data}: no preference pair came out of {counts['questions']} questions "
             f"({counts}); sample more (--samples) or at a higher --temperature")
    write_preferences(prefs, args.out)
    judged = counts["candidates"] - counts["cannot_judge"]
    print(f"{args.out}: {len(prefs)} preference rows from {counts['questions']} questions; {counts['candidates']} "
          f"candidates, {counts['right']} right of {judged} judged ({counts['cannot_judge']} cannot judge); the chosen "
          f"answer was a wrong candidate with the label's answer in {counts['corrected_chosen']} rows and the label "
          f"itself in {counts['label_chosen']}; {counts['no_pair']} questions gave no pair")


def _train(argv: list[str]) -> None:
    defaults = TrainingSettings()
    parser = argparse.ArgumentParser(
        prog="fedgrpo reward-model train",
        description="Train a Bradley-Terry reward model on (question, chosen, rejected) rows with TRL's RewardTrainer; "
        "the folder is what `fedgrpo reward-client --reward-model DIR` serves.",
    )
    parser.add_argument("--preferences", type=Path, required=True,
                        help=".jsonl, .csv, .parquet or `datasets` folder with question, chosen, rejected[, domain]")
    parser.add_argument("--base", default=MINILM,
                        help=f"backbone: {MINILM} (all-MiniLM-L6-v2, fast on a CPU; default), smollm2-135m-instruct, "
                        "tiny-llama, or a Hugging Face folder; a new scalar head goes on top")
    parser.add_argument("--out", type=Path, required=True, help="the reward model folder to write (replaced whole)")
    parser.add_argument("--epochs", type=float, default=defaults.epochs, help=f"(default {defaults.epochs})")
    parser.add_argument("--learning-rate", type=float, default=defaults.learning_rate,
                        help=f"(default {defaults.learning_rate})")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help=f"pairs per step "
                        f"(default {defaults.batch_size})")
    parser.add_argument("--max-length", type=int, default=defaults.max_length,
                        help=f"question + answer tokens kept (default {defaults.max_length})")
    parser.add_argument("--held-out-fraction", type=float, default=defaults.held_out_fraction,
                        help=f"questions kept out of training to measure preference accuracy "
                        f"(default {defaults.held_out_fraction})")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="head initialisation and data order")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--cache-dir", type=Path, default=Path(".cache/models"), help="where built-in models live")
    parser.add_argument("--question-column", default=PreferenceColumns.question)
    parser.add_argument("--chosen-column", default=PreferenceColumns.chosen)
    parser.add_argument("--rejected-column", default=PreferenceColumns.rejected)
    args = parser.parse_args(argv)
    fail = lambda flag, problem: _fail("train", flag, problem)  # noqa: E731
    for flag, value in (("--batch-size", args.batch_size), ("--max-length", args.max_length)):
        if value < 1:
            fail(flag, f"got {value}, expected at least 1")
    for flag, value in (("--epochs", args.epochs), ("--learning-rate", args.learning_rate)):
        if not value > 0:
            fail(flag, f"got {value}, expected a positive number")
    columns = PreferenceColumns(args.question_column, args.chosen_column, args.rejected_column)
    try:
        prefs = read_preferences(args.preferences, columns)
    except DataFileError as err:
        fail("--preferences", err)
    settings = TrainingSettings(
        epochs=args.epochs, learning_rate=args.learning_rate, batch_size=args.batch_size, max_length=args.max_length,
        held_out_fraction=args.held_out_fraction, seed=args.seed, device=args.device,
    )
    try:
        backbone = resolve_backbone(args.base, args.cache_dir)
        report = train_reward_model(prefs, backbone, args.out, settings, backbone_name=args.base)
    except RewardModelError as err:
        raise SystemExit(f"fedgrpo reward-model train: {err}") from None
    print(f"{args.out}: reward model on {args.base}, {report.train_pairs} training pairs, {report.seconds:.0f}s, "
          f"final loss {report.final_loss:.3f}")
    print(f"held-out preference accuracy ({report.held_out_pairs} pairs of questions it never saw): "
          f"{report.held_out_accuracy_before:.3f} before training -> {report.held_out_accuracy_after:.3f} after")


COMMANDS = {"preferences": _preferences, "train": _train}


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        print(__doc__.strip().splitlines()[0] + "\n\n" + "\n".join(__doc__.strip().splitlines()[2:4]))
        raise SystemExit(0 if argv and argv[0] in ("-h", "--help") else 2)
    COMMANDS[argv[0]](argv[1:])
