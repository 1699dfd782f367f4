"""The experiment's report: figures per method, the done-when claims, Markdown, JSON and plots.

``summarise(records)`` is pure: per method, held-out accuracy per domain and
on average (mean and sample std over seeds), routing precision, bytes per
client per step in each direction, and seconds per run. ``claims`` checks
the issue's claims against those figures and says, with the numbers, whether
each holds. ``write_report`` writes report.md, report.json (the same
figures), accuracy_by_method.png, reward_curves.png and confidence_graph.png.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

LABELS = {
    "zero_shot": "zero-shot",
    "fedgrpo": "FedGRPO (confidence graph)",
    "random": "random experts",
    "all": "all clients averaged",
    "centralised": "centralised GRPO",
    "gt_free": "FedGRPO ground-truth-free",
}


@dataclass
class MethodRun:
    """One method at one seed: what it scored and what it cost."""

    method: str
    seed: int
    run_id: str
    per_domain: dict[str, float]
    overall: float
    steps: list[dict] = field(default_factory=list)  # StepMetrics as dicts
    wire: dict[str, tuple[int, int]] = field(default_factory=dict)  # client -> (bytes to it, bytes from it)
    n_steps: int = 0
    seconds: float = 0.0

    def to_json(self) -> dict:
        return asdict(self)


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(records: Sequence[MethodRun]) -> dict[str, dict]:
    """Per method (in first-seen order): accuracy, routing precision, bytes per client per step, time."""
    by_method: dict[str, list[MethodRun]] = {}
    for r in records:
        by_method.setdefault(r.method, []).append(r)
    out: dict[str, dict] = {}
    for method, runs in by_method.items():
        domains = list(runs[0].per_domain)
        acc = {d: _mean_std([r.per_domain[d] for r in runs]) for d in domains}
        avg = _mean_std([r.overall for r in runs])
        precision = _mean_std([s.get("routing_precision", math.nan) for r in runs for s in r.steps])
        to_client, from_client = [], []
        for r in runs:
            for sent, received in r.wire.values():
                if r.n_steps:
                    to_client.append(sent / r.n_steps)
                    from_client.append(received / r.n_steps)
        curve_len = max((len(r.steps) for r in runs), default=0)
        curve = [
            _mean_std([r.steps[i]["reward_mean"] for r in runs if i < len(r.steps)])[0] for i in range(curve_len)
        ]
        out[method] = {
            "label": LABELS.get(method, method),
            "seeds": [r.seed for r in runs],
            "accuracy": {d: {"mean": m, "std": s} for d, (m, s) in acc.items()},
            "average": {"mean": avg[0], "std": avg[1]},
            "routing_precision": precision[0],
            "bytes_to_client_per_step": _mean_std(to_client)[0],
            "bytes_from_client_per_step": _mean_std(from_client)[0],
            "clients_used": sorted({c for r in runs for c in r.wire}),
            "seconds_per_run": _mean_std([r.seconds for r in runs])[0],
            "reward_curve": curve,
        }
    return out


def claims(summary: Mapping[str, dict], experts: int, clients: int) -> list[dict]:
    """The issue's done-when claims, each with whether it holds and the numbers behind it."""
    result = []

    def avg(method: str) -> float:
        return summary[method]["average"]["mean"]

    if "fedgrpo" in summary:
        p = summary["fedgrpo"]["routing_precision"]
        text = f"FedGRPO routing precision {p:.3f} (needs >= 0.9)"
        if "random" in summary:
            text += f"; random selection {summary['random']['routing_precision']:.3f} (M/K = {experts / clients:.2f})"
        result.append({"claim": "routing precision >= 0.9", "holds": p >= 0.9, "numbers": text})
    if {"fedgrpo", "random"} <= summary.keys():
        f, r = avg("fedgrpo"), avg("random")
        result.append({"claim": "FedGRPO beats random expert selection", "holds": f > r,
                       "numbers": f"FedGRPO {f:.3f} vs random {r:.3f} ({100 * (f - r):+.1f} points)",
                       "methods": ("fedgrpo", "random")})
    if {"fedgrpo", "centralised"} <= summary.keys():
        f, c = avg("fedgrpo"), avg("centralised")
        result.append({"claim": "FedGRPO within 3 points of centralised GRPO", "holds": f >= c - 0.03,
                       "numbers": f"FedGRPO {f:.3f} vs centralised {c:.3f} ({100 * (f - c):+.1f} points)",
                       "methods": ("fedgrpo", "centralised")})
    if {"gt_free", "zero_shot"} <= summary.keys():
        g, z = avg("gt_free"), avg("zero_shot")
        result.append({"claim": "ground-truth-free FedGRPO beats zero-shot", "holds": g > z,
                       "numbers": f"ground-truth-free {g:.3f} vs zero-shot {z:.3f} ({100 * (g - z):+.1f} points)",
                       "methods": ("gt_free", "zero_shot")})
    for c in result:
        if "methods" in c:
            a, b = (summary[m]["average"] for m in c.pop("methods"))
            spread = max(a["std"], b["std"])
            if abs(a["mean"] - b["mean"]) <= spread:
                c["numbers"] += f"; the difference is within the seed spread (std up to {spread:.3f}): not significant"
    return result


def _pm(stat: Mapping[str, float]) -> str:
    return f"{stat['mean']:.3f} ± {stat['std']:.3f}" if math.isfinite(stat["mean"]) else "-"


def _num(x: float, fmt: str = "{:.3f}") -> str:
    return fmt.format(x) if x is not None and math.isfinite(x) else "-"


def render_markdown(report: Mapping) -> str:
    s, summary = report["settings"], report["methods"]
    domains = s["domains"]
    lines = [
        "# FedGRPO experiment",
        "",
        f"Policy `{s['model']}`, judge model `{s['judge_model']}`, {s['clients']} reward clients over "
        f"{', '.join(domains)} by a Dirichlet(alpha = {s['alpha']}) split (seed {s['split_seed']}); "
        f"{s['steps']} steps of {s['questions_per_step']} questions x {s['candidates_per_question']} candidates, "
        f"M = {s['experts_per_question']}, {s['reward_reading']} reading, {s['loss_type']}, lr {s['learning_rate']}; "
        f"seeds {s['seeds']}; held-out: {s['eval_questions']} questions per domain, greedy, the same for every "
        f"method. Wall time {report['wall_seconds'] / 60:.1f} min on this machine"
        + (" (resumed: the sum of the sessions, each with its own start-up)." if report.get("resumed") else "."),
        "",
        "## Held-out accuracy (mean ± sample std over seeds)",
        "",
        "| method | " + " | ".join(domains) + " | average |",
        "|---" * (len(domains) + 2) + "|",
    ]
    for m in summary.values():
        lines.append(f"| {m['label']} | " + " | ".join(_pm(m["accuracy"][d]) for d in domains)
                     + f" | **{_pm(m['average'])}** |")
    lines += [
        "",
        "Zero-shot is greedy decoding of the untrained policy on fixed questions: one evaluation, no spread.",
        "",
        "## Routing, traffic and time",
        "",
        "| method | routing precision | bytes to a client per step | bytes from a client per step | s per run |",
        "|---|---|---|---|---|",
    ]
    for key, m in summary.items():
        if key == "zero_shot":
            continue
        lines.append(
            f"| {m['label']} | {_num(m['routing_precision'])} | {_num(m['bytes_to_client_per_step'], '{:,.0f}')} "
            f"| {_num(m['bytes_from_client_per_step'], '{:,.0f}')} | {_num(m['seconds_per_run'], '{:.0f}')} |"
        )
    lines += [
        "",
        "Routing precision: the fraction of questions whose experts include a client holding the question's "
        "domain. Bytes are counted on the wire (TCP bytes through a relay in front of each client: gRPC, "
        "HTTP/2 framing and headers included), per client the run used, divided by the run's steps. "
        f"Probing at join cost each client {_num(report['probe_bytes_per_client'], '{:,.0f}')} bytes on average.",
        "",
        "## Claims",
        "",
    ]
    for c in report["claims"]:
        lines.append(f"- **{c['claim']}**: {'holds' if c['holds'] else 'does NOT hold'}. {c['numbers']}.")
    lines += ["", "## The federation", "", "| client | holds | probed judging accuracy per domain |", "|---|---|---|"]
    for name, held in report["holdings"].items():
        acc = report["graph_accuracy"].get(name, {})
        lines.append(f"| {name} | {', '.join(held) or '-'} | "
                     + ", ".join(f"{d} {a:.2f}" for d, a in sorted(acc.items())) + " |")
    lines += [
        "",
        "![accuracy](accuracy_by_method.png)",
        "",
        "![reward curves](reward_curves.png)",
        "",
        "![confidence graph](confidence_graph.png)",
        "",
    ]
    return "\n".join(lines)


def _plot_accuracy(summary: Mapping[str, dict], domains: Sequence[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    groups = [*domains, "average"]
    methods = list(summary)
    width = 0.8 / max(1, len(methods))
    fig, ax = plt.subplots(figsize=(max(7, 1.3 * len(groups)), 4))
    x = np.arange(len(groups))
    for i, key in enumerate(methods):
        m = summary[key]
        stats = [m["accuracy"][d] for d in domains] + [m["average"]]
        ax.bar(x + i * width, [s["mean"] for s in stats], width, yerr=[s["std"] for s in stats], capsize=2,
               label=m["label"])
    ax.set_xticks(x + width * (len(methods) - 1) / 2, groups)
    ax.set_ylabel("held-out accuracy")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title("held-out accuracy per method (mean ± std over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_rewards(summary: Mapping[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for key, m in summary.items():
        if m["reward_curve"]:
            ax.plot(range(1, len(m["reward_curve"]) + 1), m["reward_curve"], marker=".", label=m["label"])
    ax.set_xlabel("step")
    ax.set_ylabel("mean reward (as the method's clients judged it)")
    ax.legend(fontsize=7)
    ax.set_title("training reward per step (mean over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(
    out: Path,
    settings: Mapping,
    split,
    names: Mapping[str, list[str]],
    records: Sequence[MethodRun],
    graph: Mapping,
    probe_wire: Mapping[str, tuple[int, int]],
    wall_seconds: float,
    resumed: bool = False,
) -> Path:
    from services.orchestrator.graph_plot import draw

    summary = summarise(records)
    accuracy: dict[str, dict[str, float]] = {}
    for c in graph.get("competences", []):
        accuracy.setdefault(c["client"], {})[c["domain"]] = c.get("accuracy", 0.0)
    holdings = {name: list(held) for name, held in zip(names.get("federated", []), split.holdings)}
    holdings.update({name: list(held) for name, held in zip(names.get("gt_free", []), split.holdings)})
    holdings.update({name: list(settings["domains"]) for name in names.get("central", [])})
    probe = [sent + received for sent, received in probe_wire.values()]
    report = {
        "settings": dict(settings),
        "wall_seconds": wall_seconds,
        "resumed": resumed,
        "methods": summary,
        "claims": claims(summary, settings["experts_per_question"], settings["clients"]),
        "holdings": holdings,
        "split_shares": split.shares,
        "graph_accuracy": accuracy,
        "probe_bytes_per_client": statistics.fmean(probe) if probe else math.nan,
        "runs": [r.to_json() for r in records],
    }
    (out / "report.json").write_text(json.dumps(report, indent=1, default=str))
    _plot_accuracy(summary, settings["domains"], out / "accuracy_by_method.png")
    _plot_rewards(summary, out / "reward_curves.png")
    federated = {n: accuracy.get(n, {}) for n in names.get("federated", []) or list(accuracy)}
    draw(federated, out / "confidence_graph.png", title="federated clients")
    if names.get("gt_free"):
        draw({n: accuracy.get(n, {}) for n in names["gt_free"]}, out / "confidence_graph_gt_free.png",
             title="ground-truth-free clients")
    path = out / "report.md"
    path.write_text(render_markdown(report))
    return path
