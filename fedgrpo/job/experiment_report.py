"""The experiment's report: figures per method, the done-when claims, Markdown, JSON and plots.

``summarise(records)`` is pure: per method, held-out accuracy per domain and
on average (mean and sample std over seeds), routing precision, bytes per
client per step in each direction, seconds per run and rollouts per
question. ``claims`` checks the issue's claims: routing precision against its
threshold, and each accuracy claim by a paired comparison of per-question
correctness (``paired``: mean difference, 95% bootstrap interval over seeds
and questions, verdict holds / does not hold / inconclusive).
``write_report`` writes report.md, report.json (the same figures, the
held-out set's size and overlaps), accuracy_by_method.png, reward_curves.png
and confidence_graph.png.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .experiment_reward_models import render_markdown as reward_models_markdown
from .paired import MARGIN, RESAMPLES, RNG_SEED, compare

LABELS = {
    "zero_shot": "zero-shot",
    "fedgrpo": "FedGRPO (confidence graph)",
    "random": "random experts",
    "all": "all clients averaged",
    "centralised": "centralised GRPO",
    "gt_free": "FedGRPO ground-truth-free",
    "mor": "MoR (reward router)",
    "fedmoa": "FedMOA (local LoRA GRPO)",
    "fedavg_lora": "FedAvg of LoRA adapters",
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
    correct: dict[str, list[int]] = field(default_factory=dict)  # domain -> 1/0 per held-out question, in order
    held_out_digest: str = ""  # which held-out questions: runs pair only on the same ones
    rollouts_per_question: int = 0  # candidates the policy sampled per training question
    router_weights: dict[str, dict[str, float]] = field(default_factory=dict)  # mor: client -> domain -> weight
    rollouts_per_run: int = 0  # policy samples the run trained on (its budget)

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
        # A parameter-exchange round routes nothing: its precision is "-", not 0.
        precision = _mean_std([s.get("routing_precision", math.nan) for r in runs for s in r.steps
                               if not s.get("round")])
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
            "rollouts_per_question": runs[0].rollouts_per_question,
            "rollouts_per_run": runs[0].rollouts_per_run,
            "steps_per_run": runs[0].n_steps,
            "bytes_per_client_per_run": _mean_std(
                [(sent + received) for r in runs for sent, received in r.wire.values()])[0],
            "bytes_per_run": _mean_std([sum(a + b for a, b in r.wire.values()) for r in runs])[0],
            "reward_curve": curve,
        }
    return out


def _by_seed(records: Sequence[MethodRun], method: str) -> dict[int, list[int]]:
    """seed -> correctness per held-out question (domains in record order, concatenated)."""
    return {r.seed: [x for d in r.correct for x in r.correct[d]] for r in records if r.method == method}


def _strata(records: Sequence[MethodRun], method: str) -> list[str]:
    r = next(r for r in records if r.method == method)
    return [d for d in r.correct for _ in r.correct[d]]


# (claim, method A, method B, kind): A - B is the paired difference.
PAIRED_CLAIMS = [
    ("FedGRPO beats zero-shot", "fedgrpo", "zero_shot", "beats"),
    ("FedGRPO beats all clients averaged", "fedgrpo", "all", "beats"),
    ("FedGRPO beats random expert selection", "fedgrpo", "random", "beats"),
    ("FedGRPO within 3 points of centralised GRPO", "fedgrpo", "centralised", "within"),
    ("ground-truth-free FedGRPO beats zero-shot", "gt_free", "zero_shot", "beats"),
    ("MoR beats zero-shot", "mor", "zero_shot", "beats"),
    ("FedGRPO beats MoR", "fedgrpo", "mor", "beats"),
    ("FedMOA beats zero-shot", "fedmoa", "zero_shot", "beats"),
    ("FedMOA beats FedAvg of LoRA adapters", "fedmoa", "fedavg_lora", "beats"),
    ("FedGRPO beats FedMOA", "fedgrpo", "fedmoa", "beats"),
]


def _per_step(m: Mapping) -> float:
    return m["bytes_to_client_per_step"] + m["bytes_from_client_per_step"]


def traffic_ratio(summary: Mapping[str, dict]) -> float | None:
    """LoRA exchange's bytes per client per round over FedGRPO's per client per step (None without both arms)."""
    if not {"fedgrpo", "fedavg_lora"} <= summary.keys():
        return None
    fedgrpo, lora = _per_step(summary["fedgrpo"]), _per_step(summary["fedavg_lora"])
    if not (math.isfinite(fedgrpo) and math.isfinite(lora)) or fedgrpo <= 0:
        return None
    return lora / fedgrpo


def claims(summary: Mapping[str, dict], experts: int, clients: int,
           records: Sequence[MethodRun] = ()) -> list[dict]:
    """The issue's done-when claims, each with its verdict and the numbers behind it.

    Accuracy claims are paired (``paired.compare``): the mean over seeds and questions of A's minus B's
    correctness, with a 95% bootstrap interval over seeds and questions; the verdict follows the interval."""
    result = []
    if "fedgrpo" in summary:
        p = summary["fedgrpo"]["routing_precision"]
        text = f"FedGRPO routing precision {p:.3f} (needs >= 0.9)"
        if "random" in summary:
            text += f"; random selection {summary['random']['routing_precision']:.3f} (M/K = {experts / clients:.2f})"
        result.append({"claim": "routing precision >= 0.9", "verdict": "holds" if p >= 0.9 else "does not hold",
                       "holds": p >= 0.9, "numbers": text})
    ratio = traffic_ratio(summary)
    if ratio is not None:
        result.append({
            "claim": "FedGRPO moves >= 1000x fewer bytes per step than LoRA exchange",
            "verdict": "holds" if ratio >= 1000 else "does not hold", "holds": ratio >= 1000, "ratio": ratio,
            "numbers": f"bytes to and from a client per step (a round for LoRA exchange), on the wire: FedAvg of "
                       f"LoRA adapters {_per_step(summary['fedavg_lora']):,.0f}, FedGRPO "
                       f"{_per_step(summary['fedgrpo']):,.0f}: {ratio:,.0f}x (measured, one figure per run: no "
                       "interval)",
        })
    for claim, a, b, kind in PAIRED_CLAIMS:
        if not {a, b} <= summary.keys():
            continue
        have = [r for r in records if r.method in (a, b)]
        if not have or not all(r.correct for r in have):
            continue
        try:
            c = compare(_by_seed(records, a), _by_seed(records, b), _strata(records, a), kind)
        except ValueError:  # run at different seeds (a resumed part): nothing to pair
            continue
        rule = ("the interval must lie above 0" if kind == "beats"
                else f"the interval must lie inside +-{100 * MARGIN:.0f} points")
        result.append({
            "claim": claim, "verdict": c.verdict, "holds": c.verdict == "holds", "methods": [a, b],
            "difference": c.difference, "interval": [c.low, c.high], "seeds": c.seeds, "questions": c.questions,
            "numbers": f"{summary[a]['label']} minus {summary[b]['label']}: {100 * c.difference:+.1f} points, "
                       f"95% CI [{100 * c.low:+.1f}, {100 * c.high:+.1f}] over {c.seeds} seed(s) x "
                       f"{c.questions} questions, paired ({rule})",
        })
    return result


def _held_out_line(h: Mapping) -> str:
    if not h:
        return "(not recorded)"
    per = ", ".join(f"{d} {n}" for d, n in h["questions_per_domain"].items())
    o = h["overlaps"]
    return (f"{h['questions']} evaluation questions ({per}), greedy, the same for every method, drawn with seed "
            f"{h['seed']} and deduplicated by normalised text. Overlap (distinct normalised texts shared): "
            f"held-out and training pool {o['held_out_training']}, held-out and auxiliary set "
            f"{o['held_out_auxiliary']}, training pool and auxiliary set {o['training_auxiliary']}.")


def _pm(stat: Mapping[str, float], runs: int) -> str:
    """Mean ± sample std; the mean alone for one run, which has no spread to show."""
    if not math.isfinite(stat["mean"]):
        return "-"
    return f"{stat['mean']:.3f} ± {stat['std']:.3f}" if runs > 1 else f"{stat['mean']:.3f}"


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
        f"seeds {s['seeds']}. Wall time {report['wall_seconds'] / 60:.1f} min on this machine"
        + (" (resumed: the sum of the sessions, each with its own start-up)." if report.get("resumed") else "."),
        "",
        "## Held-out questions",
        "",
        _held_out_line(report.get("held_out", {})),
        "",
        "## Held-out accuracy (mean ± sample std over seeds)",
        "",
        "| method | " + " | ".join(domains) + " | average |",
        "|---" * (len(domains) + 2) + "|",
    ]
    for m in summary.values():
        runs = len(m["seeds"])
        lines.append(f"| {m['label']} | " + " | ".join(_pm(m["accuracy"][d], runs) for d in domains)
                     + f" | **{_pm(m['average'], runs)}** |")
    lines += [
        "",
        "Zero-shot is greedy decoding of the untrained policy on fixed questions: one evaluation, no spread. "
        "A figure without ± comes from one run (one seed).",
        "",
        "## Routing, traffic and time",
        "",
        "| method | routing precision | rollouts per question | bytes to a client per step "
        "| bytes from a client per step | s per run |",
        "|---|---|---|---|---|---|",
    ]
    for key, m in summary.items():
        if key == "zero_shot":
            continue
        lines.append(
            f"| {m['label']} | {_num(m['routing_precision'])} | {m.get('rollouts_per_question', 0) or '-'} "
            f"| {_num(m['bytes_to_client_per_step'], '{:,.0f}')} "
            f"| {_num(m['bytes_from_client_per_step'], '{:,.0f}')} | {_num(m['seconds_per_run'], '{:.0f}')} |"
        )
    lines += [
        "",
        "Routing precision: the fraction of questions whose experts include a client holding the question's "
        "domain. Bytes are counted on the wire (TCP bytes through a relay in front of each client: gRPC, "
        "HTTP/2 framing and headers included), per client the run used, divided by the run's steps. "
        "Rollouts per question: candidates the policy sampled for each training question (consensus: G, every "
        "expert scores all of them; pooled: M x G, each expert its own block of G). "
        f"Probing at join cost each client {_num(report['probe_bytes_per_client'], '{:,.0f}')} bytes on average.",
        "",
        "## Communication",
        "",
        "| method | steps (rounds) per run | rollouts per run | bytes to a client per step | bytes from a client "
        "per step | bytes per client per run | bytes per run, all clients |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, m in summary.items():
        if key == "zero_shot":
            continue
        lines.append(
            f"| {m['label']} | {m.get('steps_per_run', '-')} | {m.get('rollouts_per_run') or '-'} "
            f"| {_num(m['bytes_to_client_per_step'], '{:,.0f}')} | {_num(m['bytes_from_client_per_step'], '{:,.0f}')} "
            f"| {_num(m.get('bytes_per_client_per_run', math.nan), '{:,.0f}')} "
            f"| {_num(m.get('bytes_per_run', math.nan), '{:,.0f}')} |"
        )
    ratio = traffic_ratio(summary)
    lines += [
        "",
        "Counted on the wire, per client the run used. A step of the parameter-exchange arms (FedMOA, FedAvg of "
        "LoRA adapters) is a round: every local client downloads the global adapter and uploads its own; their "
        "budget in rollouts matches the server-side arms' (rounds = steps / (local clients x local steps)). "
        + (f"**LoRA exchange moves {ratio:,.0f}x the bytes of FedGRPO per client per step** (measured)."
           if ratio is not None else "Run fedgrpo and fedavg_lora together for their traffic ratio."),
        "",
        "## Claims",
        "",
    ]
    lines += [
        "Accuracy claims compare methods paired: per (seed, question), method A's correctness minus method "
        "B's on the same held-out question after runs with the same seed (zero-shot, one evaluation, pairs with "
        f"every seed). The interval is a 95% percentile bootstrap ({RESAMPLES:,} resamples, generator seed "
        f"{RNG_SEED}) over seeds and questions (questions resampled within each domain). \"beats\" holds only when "
        f"the interval lies above 0; \"within {100 * MARGIN:.0f} points\" only when it lies inside "
        f"±{MARGIN:.2f}; otherwise the claim is inconclusive (or does not hold when the interval excludes it).",
        "",
        "| claim | verdict | paired difference | 95% interval |",
        "|---|---|---|---|",
    ]
    for c in report["claims"]:
        if "interval" in c:
            lo, hi = c["interval"]
            lines.append(f"| {c['claim']} | **{c['verdict']}** | {100 * c['difference']:+.1f} points "
                         f"| [{100 * lo:+.1f}, {100 * hi:+.1f}] |")
        else:
            lines.append(f"| {c['claim']} | **{c['verdict']}** | - | - |")
    lines.append("")
    for c in report["claims"]:
        lines.append(f"- **{c['claim']}**: {c['verdict']}. {c['numbers']}.")
    lines += ["", "## The federation", "", "| client | holds | probed judging accuracy per domain |", "|---|---|---|"]
    for name, held in report["holdings"].items():
        acc = report["graph_accuracy"].get(name, {})
        lines.append(f"| {name} | {', '.join(held) or '-'} | "
                     + ", ".join(f"{d} {a:.2f}" for d, a in sorted(acc.items())) + " |")
    if report.get("reward_models") or report.get("router_weights"):
        lines += [""] + reward_models_markdown(report.get("reward_models", {}), report["holdings"],
                                               report["graph_accuracy"], report.get("router_weights", {}),
                                               s["judge_model"])
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


def _mean_router(fits: Sequence[Mapping[str, Mapping[str, float]]]) -> dict[str, dict[str, float]]:
    """Client -> domain -> the mean of its router weight over the mor runs (the same probes: equal fits)."""
    collected: dict[str, dict[str, list[float]]] = {}
    for fit in fits:
        for client, per in fit.items():
            for domain, weight in per.items():
                collected.setdefault(client, {}).setdefault(domain, []).append(weight)
    return {c: {d: statistics.fmean(ws) for d, ws in sorted(per.items())} for c, per in sorted(collected.items())}


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
    held_out: Mapping | None = None,
    reward_models: Mapping[str, Mapping] | None = None,
) -> Path:
    from fedgrpo.services.orchestrator.graph_plot import draw

    summary = summarise(records)
    accuracy: dict[str, dict[str, float]] = {}
    for c in graph.get("competences", []):
        accuracy.setdefault(c["client"], {})[c["domain"]] = c.get("accuracy", 0.0)
    holdings = {name: list(held) for name, held in zip(names.get("federated", []), split.holdings)}
    holdings.update({name: list(held) for name, held in zip(names.get("gt_free", []), split.holdings)})
    holdings.update({name: list(settings["domains"]) for name in names.get("central", [])})
    probe = [sent + received for sent, received in probe_wire.values()]
    judges = dict(reward_models or {})  # a ground-truth-free copy judges with its client's reward model
    judges.update({n.replace("client-", "gtfree-"): m for n, m in (reward_models or {}).items()})
    router = _mean_router([r.router_weights for r in records if r.method == "mor" and r.router_weights])
    report = {
        "settings": dict(settings),
        "wall_seconds": wall_seconds,
        "resumed": resumed,
        "held_out": dict(held_out or {}),
        "methods": summary,
        "claims": claims(summary, settings["experts_per_question"], settings["clients"], records),
        "holdings": holdings,
        "split_shares": split.shares,
        "graph_accuracy": accuracy,
        "probe_bytes_per_client": statistics.fmean(probe) if probe else math.nan,
        "reward_models": {n: m for n, m in judges.items() if n in holdings},
        "router_weights": router,
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
    if router:
        draw(router, out / "router_weights.png", title="MoR reward router (mor arm)", measure="mean fusion weight")
    path = out / "report.md"
    path.write_text(render_markdown(report))
    return path
