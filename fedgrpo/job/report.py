"""Artifacts of a finished main job: summary.json, the reward-curve PNG, the table.

The two files go into the run's folder, which DownloadRunArtifacts may be
reading: each is written atomically (``fedgrpo.atomic_file``), so a download
gets the whole file or none of it.
"""

from __future__ import annotations

import json
from pathlib import Path

from rich.table import Table

from fedgrpo.atomic_file import atomic_writer, replace_file

from .evaluate import Accuracy


def quarter_means(values: list[float]) -> tuple[float, float]:
    """Mean of the first and of the last quarter of the values (at least one each)."""
    k = max(1, len(values) // 4)
    return sum(values[:k]) / k, sum(values[-k:]) / k


def _accuracy(a: Accuracy | None) -> dict | None:
    if a is None:
        return None
    return {"overall": a.overall, "per_domain": a.per_domain, "policy_version": a.policy_version,
            "questions": a.questions, "correct": a.correct}


def paired_change(before: Accuracy, after: Accuracy) -> dict | None:
    """After minus before on the same questions, with its 95% paired bootstrap interval (questions
    resampled within their domain) and whether it shows an improvement; None when the two did not
    judge the same questions (a checker that could not judge some answers)."""
    from .paired import compare

    if {d: len(v) for d, v in before.correct.items()} != {d: len(v) for d, v in after.correct.items()}:
        return None
    strata = [d for d, v in before.correct.items() for _ in v]
    flat = {name: [x for v in a.correct.values() for x in v] for name, a in (("before", before), ("after", after))}
    c = compare({0: flat["after"]}, {0: flat["before"]}, strata, "beats")
    return {"difference": c.difference, "interval": [c.low, c.high], "improvement": c.verdict,
            "questions": c.questions}


def write_summary(
    path: Path, run: dict, before: Accuracy | None, after: Accuracy | None, steps: list[dict],
    held_out: dict | None = None, extra: dict | None = None,
) -> dict:
    """Write summary.json: the run, accuracy before/after (None: not measured), reward quarters, routing."""
    rewards = [s["reward_mean"] for s in steps if s.get("reward_mean") is not None]
    first, last = quarter_means(rewards) if rewards else (float("nan"), float("nan"))
    summary = {
        "run_id": run["run_id"],
        "state": run["state"],
        "spec": run["spec"],
        "steps_completed": len(steps),
        "held_out": held_out or {},
        "accuracy_before": _accuracy(before),
        "accuracy_after": _accuracy(after),
        "accuracy_change": paired_change(before, after) if before is not None and after is not None else None,
        "reward_mean_first_quarter": first,
        "reward_mean_last_quarter": last,
        "routing_precision": sum(s.get("routing_precision", 0.0) for s in steps) / max(1, len(steps)),
        "seconds_per_step": sum(s.get("step_seconds", 0.0) for s in steps) / max(1, len(steps)),
        **(extra or {}),
    }
    replace_file(path, json.dumps(summary, indent=2), private=False)
    return summary


def plot_rewards(path: Path, steps: list[dict], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [s["step"] for s in steps]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(xs, [s["reward_mean"] for s in steps], marker="o", ms=3, label="mean reward")
    ax.plot(xs, [s["accuracy"] for s in steps], marker=".", ms=3, alpha=0.7, label="judged correct")
    k = max(1, len(xs) // 4)
    if len(xs) >= 4:
        smooth = [sum(s["reward_mean"] for s in steps[max(0, i - k + 1): i + 1]) / len(steps[max(0, i - k + 1): i + 1])
                  for i in range(len(steps))]
        ax.plot(xs, smooth, lw=2, label=f"mean reward, moving average of {k}")
    ax.set_xlabel("step")
    ax.set_ylabel("reward / fraction")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    ax.set_title(title)
    fig.tight_layout()
    with atomic_writer(path, private=False) as f:
        fig.savefig(f, dpi=120, format="png")
    plt.close(fig)


def accuracy_table(before: Accuracy, after: Accuracy, overlaps: dict[str, int] | None = None) -> Table:
    shared = "" if overlaps is None else (
        f"; shared with the training pool {overlaps['held_out_training']}, "
        f"with the auxiliary set {overlaps['held_out_auxiliary']}"
    )
    per = ", ".join(f"{d} {len(v)}" for d, v in before.correct.items())
    table = Table(title=f"Accuracy (greedy, {before.questions} questions: {per}{shared})")
    table.add_column("domain")
    table.add_column(f"before (v{before.policy_version})", justify="right")
    table.add_column(f"after (v{after.policy_version})", justify="right")
    table.add_column("change", justify="right")
    for d in before.per_domain:
        b, a = before.per_domain[d], after.per_domain[d]
        table.add_row(d, f"{b:.3f}", f"{a:.3f}", f"{a - b:+.3f}")
    table.add_row("overall", f"{before.overall:.3f}", f"{after.overall:.3f}",
                  f"{after.overall - before.overall:+.3f}", style="bold")
    return table
