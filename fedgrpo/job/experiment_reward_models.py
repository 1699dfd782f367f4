"""The experiment's clients build their own reward models from their own labels (MoR), as organisations would.

Contract
--------
``build_reward_models(labels, folder, options, console)`` takes each client's
labels file (``None``: it holds no labels and builds none) and, for each
client that has one, runs the two commands an organisation runs on its own
machine, as separate processes reading only that client's file:

    fedgrpo reward-model preferences --data <its labels> --model <its model> --sample N ...
    fedgrpo reward-model train --preferences <those rows> --base minilm --out <folder>/<name>/reward-model

Each client samples with its own seed (its index): no generator is shared.
It returns ``{name: ClientRewardModel}``: the folder the client serves with
``--reward-model``, its preference rows, the held-out preference accuracy
training reported (before and after) and the seconds each command took. A
client whose folder already holds a finished model (a resumed experiment)
is not built again: its figures are read back from the folder. A command
that fails stops the experiment with the command's last lines.

``render_markdown(models, holdings, graph_accuracy, router, judge_model)`` is
the report's section on them (``models``: client name -> its model's
figures, a ground-truth-free copy under its own name too): how good each reward model is (held-out
preference accuracy; probed judging accuracy per domain, from the
confidence graph) and the router's mean weight per client and domain in the
``mor`` arm.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.console import Console

from fedgrpo.reward_models.training import METADATA_FILE

__all__ = ["RewardModelOptions", "ClientRewardModel", "build_reward_models", "render_markdown"]

BUILD_FILE = "reward-model-build.json"  # beside the model folder: the figures of its build, for a resumed report


@dataclass(frozen=True)
class RewardModelOptions:
    model: str  # the local model that samples candidates (each client's own small model)
    base: str = "minilm"  # the reward model's backbone
    questions: int = 100  # labelled questions sampled per client
    samples: int = 4  # candidates per question
    pairs_per_question: int = 2
    max_tokens: int = 32
    instruction: str = ""
    checker: str = "reasoning-gym"
    epochs: float = 2.0
    backend: str = "vllm"
    device: str = "cpu"
    dtype: str = "float32"
    cache_dir: Path = Path(".cache/models")


@dataclass(frozen=True)
class ClientRewardModel:
    name: str
    folder: str
    preference_rows: int
    train_pairs: int
    held_out_pairs: int
    held_out_accuracy_before: float
    held_out_accuracy_after: float
    preference_seconds: float
    training_seconds: float

    def to_json(self) -> dict:
        return asdict(self)


def _command(args: list[str], log: Path, what: str) -> float:
    """Run ``fedgrpo <args>`` with its output in ``log``; its seconds, or SystemExit with its last lines."""
    started = time.monotonic()
    with log.open("w") as out:
        done = subprocess.run([sys.executable, "-m", "fedgrpo.cli", *args], stdout=out, stderr=subprocess.STDOUT,
                              check=False)
    if done.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise SystemExit(f"fedgrpo experiment: {what} failed (exit {done.returncode}; log {log}):\n{tail}")
    return time.monotonic() - started


def _build(
    name: str, labels: Path, home: Path, seed: int, o: RewardModelOptions, console: Console
) -> ClientRewardModel:
    home.mkdir(parents=True, exist_ok=True)
    prefs, out = home / "preferences.jsonl", home / "reward-model"
    console.log(f"{name}: sampling candidates for {o.questions} of its labelled questions with {o.model} ...")
    sampling = _command(
        ["reward-model", "preferences", "--data", str(labels), "--model", o.model, "--out", str(prefs),
         "--checker", o.checker, "--instruction", o.instruction, "--sample", str(o.questions),
         "--samples", str(o.samples), "--pairs-per-question", str(o.pairs_per_question),
         "--max-tokens", str(o.max_tokens), "--backend", o.backend, "--device", o.device, "--dtype", o.dtype,
         "--seed", str(seed), "--cache-dir", str(o.cache_dir)],
        home / "preferences.log", f"{name}'s reward-model preferences")
    console.log(f"{name}: training its reward model on {o.base} ...")
    training = _command(
        ["reward-model", "train", "--preferences", str(prefs), "--base", o.base, "--out", str(out),
         "--epochs", str(o.epochs), "--seed", str(seed), "--device", o.device, "--cache-dir", str(o.cache_dir)],
        home / "train.log", f"{name}'s reward-model train")
    rows = sum(1 for line in prefs.read_text().splitlines() if line.strip())
    (home / BUILD_FILE).write_text(json.dumps({"preference_rows": rows, "preference_seconds": sampling,
                                               "training_seconds": training}))
    return _read(name, home)


def _read(name: str, home: Path) -> ClientRewardModel:
    report = json.loads((home / "reward-model" / METADATA_FILE).read_text())["report"]
    build = json.loads((home / BUILD_FILE).read_text())
    return ClientRewardModel(
        name, str(home / "reward-model"), build["preference_rows"], report["train_pairs"], report["held_out_pairs"],
        report["held_out_accuracy_before"], report["held_out_accuracy_after"], build["preference_seconds"],
        build["training_seconds"],
    )


def build_reward_models(
    labels: Mapping[str, Path | None], folder: Path, options: RewardModelOptions, console: Console,
) -> dict[str, ClientRewardModel]:
    """Each labelled client's own reward model (see the module docstring)."""
    models = {}
    for seed, (name, file) in enumerate(labels.items()):
        if file is None:
            continue
        home = folder / name
        if (home / "reward-model" / METADATA_FILE).is_file() and (home / BUILD_FILE).is_file():
            models[name] = _read(name, home)
            console.log(f"{name}: reward model already built in {home} (resumed)")
        else:
            models[name] = _build(name, file, home, seed, options, console)
        m = models[name]
        console.log(
            f"{name}: reward model from {m.preference_rows} preference rows, held-out preference accuracy "
            f"{m.held_out_accuracy_before:.3f} -> {m.held_out_accuracy_after:.3f} ({m.held_out_pairs} pairs); "
            f"{m.preference_seconds:.0f}s sampling + {m.training_seconds:.0f}s training"
        )
    return models


def _acc(x: float) -> str:
    return f"{x:.3f}" if x == x else "-"


def render_markdown(
    models: Mapping[str, Mapping], holdings: Mapping[str, Sequence[str]], graph_accuracy: Mapping[str, Mapping],
    router: Mapping[str, Mapping[str, float]], judge_model: str,
) -> list[str]:
    """The report's section on the clients' reward models and the MoR router (see the module docstring)."""
    lines = [
        "## Client reward models (MoR)",
        "",
        "Each client holding labels built its own reward model on its own data (`fedgrpo reward-model "
        "preferences`, then `train`), and judges with it every question it has no label for; the "
        "ground-truth-free copy of a client judges every question with it. A client holding no labels has no "
        f"preferences to learn from and judges with `{judge_model}` answering the question itself.",
        "",
        "| client | holds | preference rows | held-out preference accuracy (before -> after) "
        "| s (sampling + training) | probed judging accuracy per domain |",
        "|---|---|---|---|---|---|",
    ]
    for name, held in holdings.items():
        m = models.get(name)
        acc = ", ".join(f"{d} {a:.2f}" for d, a in sorted(graph_accuracy.get(name, {}).items()))
        if m:
            lines.append(
                f"| {name} | {', '.join(held) or '-'} | {m['preference_rows']} | "
                f"{_acc(m['held_out_accuracy_before'])} -> {_acc(m['held_out_accuracy_after'])} "
                f"({m['held_out_pairs']} pairs) | {m['preference_seconds']:.0f} + {m['training_seconds']:.0f} | {acc} |"
            )
        elif name.startswith(("client-", "gtfree-")):
            lines.append(f"| {name} | {', '.join(held) or '-'} | - | (no labels: `{judge_model}` judges) | - | {acc} |")
    built = {m["folder"]: m for m in models.values()}  # a ground-truth-free copy shares its client's model
    seconds = sum(m["preference_seconds"] + m["training_seconds"] for m in built.values())
    lines += [
        "",
        f"Building the reward models took {seconds / 60:.1f} min in all. Held-out preference accuracy: the "
        "fraction of preference pairs of questions kept out of training whose chosen answer the model scores "
        "higher. Probed judging accuracy: how often the client's reward, read at 0.5, agreed with the truth on "
        "the confidence graph's probes (auxiliary questions, candidates right and wrong), its labels included "
        "where it holds the domain.",
        "",
    ]
    if router:
        domains = sorted({d for per in router.values() for d in per})
        lines += [
            "## The reward router (mor arm)",
            "",
            "The router's mean weight per client on each domain's auxiliary questions, fitted on the probes "
            "over the arm's clients (each row of a domain sums to 1 over the clients).",
            "",
            "| client | " + " | ".join(domains) + " |",
            "|---" * (len(domains) + 1) + "|",
        ]
        for name, per in sorted(router.items()):
            lines.append(f"| {name} | " + " | ".join(f"{per.get(d, 0.0):.3f}" for d in domains) + " |")
        lines += ["", "![router weights](router_weights.png)", ""]
    return lines
