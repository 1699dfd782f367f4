"""Running a federation file on this machine (`fedgrpo run`, `make run`).

Contract
--------
``run_federation(federation, runs_dir, job_dir, cache_dir, ...)`` builds the
file's ``[[make]]`` data files that are missing, starts the trainer, one
reward client per ``[[clients]]`` table and the orchestrator as separate
processes on loopback ports (mutual TLS with a development CA in
``job_dir/certs``, the API called with its bearer token), then acts as any
other system would through the orchestrator's public API: measures the
``[evaluation]`` file (greedy ``Generate``, the file's checker), creates the
``[run]``, follows it with a live progress bar, measures again, and writes
``runs_dir/<run id>/summary.json`` and ``reward_curve.png`` beside the
orchestrator's metrics and model. Returns the summary (see
:func:`fedgrpo.job.report.write_summary`) with ``rewards_by_client`` per
step, ``competence`` (probed judging accuracy per client and domain) and
``seconds``. With ``held_out`` evaluation, a file sharing a question with
the server's datasets or auxiliary set is refused before anything starts.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

from .federation_file import FederationFile, FederationFileError, make_files

__all__ = ["run_federation", "evaluation_rows"]


def _flag(key: str, value: Any) -> list[str]:
    flag = "--" + key.replace("_", "-")
    if isinstance(value, bool):
        return [flag] if value else [f"--no-{key.replace('_', '-')}"]
    if isinstance(value, (list, tuple)):
        return [flag, ",".join(str(v) for v in value)]
    return [flag, str(value)]


def evaluation_rows(federation: FederationFile) -> tuple[list, dict]:
    """The ``[evaluation]`` rows (at most ``per_domain`` of each domain) and what they share with the server.

    The second item counts distinct questions (normalised text) the rows share with the server's
    datasets (``held_out_training``) and auxiliary set (``held_out_auxiliary``); with ``held_out``
    any shared question is a :class:`FederationFileError`."""
    from fedgrpo.data.files import normalise, read_rows

    evaluation = federation.evaluation
    assert evaluation is not None
    rows, taken = [], {}
    for row in read_rows(evaluation.dataset, labelled=True):
        domain = row.domain or ""
        if evaluation.per_domain is None or taken.get(domain, 0) < evaluation.per_domain:
            taken[domain] = taken.get(domain, 0) + 1
            rows.append(row)
    asked = {normalise(r.question) for r in rows}
    server = federation.server
    training = {normalise(r.question) for p in server.datasets.values() for r in read_rows(p)}
    auxiliary = {normalise(r.question) for r in read_rows(server.auxiliary)} if server.auxiliary else set()
    overlaps = {"held_out_training": len(asked & training), "held_out_auxiliary": len(asked & auxiliary)}
    if evaluation.held_out and any(overlaps.values()):
        raise FederationFileError(
            f"evaluation.dataset {evaluation.dataset}: held_out = true, but {overlaps['held_out_training']} of its "
            f"questions are in server.datasets and {overlaps['held_out_auxiliary']} in server.auxiliary; make it "
            "with --exclude (see [[make]]), or set held_out = false"
        )
    return rows, {"questions_per_domain": taken, "questions": len(rows), "overlaps": overlaps,
                  "dataset": str(evaluation.dataset)}


def run_federation(
    federation: FederationFile, runs_dir: Path, job_dir: Path, cache_dir: Path, start_timeout: float = 300.0,
    log_level: str = "INFO", tensorboard: bool = False, logdir: Path | None = None,
) -> dict:
    """Start the federation the file describes, train its run, and measure it before and after.

    Runs (artifacts) go to ``runs_dir``; the job's logs, certificates and trainer state to ``job_dir``. With
    ``tensorboard``, the steps' metrics go to TensorBoard events in ``logdir`` (default: the run's folder's
    tensorboard/)."""
    from google.protobuf import json_format
    from rich.console import Console

    from fedgrpo.certs import init_federation
    from fedgrpo.client import Client, FedgrpoError
    from fedgrpo.data.checkers import load_checker
    from fedgrpo.models import resolve_model
    from fedgrpo.progress import follow_run
    from fedgrpo.tasks import PromptFormat
    from fedgrpo.v1 import orchestrator_pb2 as pb

    from .evaluate import labelled_accuracy
    from .launcher import Federation
    from .report import accuracy_table, plot_rewards, write_summary

    console = Console()
    started = time.monotonic()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    policy, server, evaluation = federation.policy, federation.server, federation.evaluation
    make_files(federation, console.log)
    rows, held_out = evaluation_rows(federation) if evaluation is not None else ([], None)
    if held_out is not None:
        console.log(f"evaluation: {held_out['questions']} questions {held_out['questions_per_domain']}, shared "
                    f"with the server's questions and auxiliary set: {held_out['overlaps']}")
    console.log(f"preparing model {policy.model} ...")
    resolve_model(policy.model, cache_dir)  # once here, so services never race to convert it
    certs = job_dir / "certs"
    init_federation(certs, clients=[c.name for c in federation.clients])
    common = ["--model", policy.model, "--cache-dir", str(cache_dir), "--log-level", log_level]
    log_dir = job_dir / "logs"
    with Federation(log_dir, certs=certs) as fed:
        trainer = fed.start("trainer", "trainer", [*common, "--state-dir", str(job_dir / "trainer"),
                                                   "--device", policy.device, "--dtype", policy.dtype])
        clients = []
        for client in federation.clients:
            args = ["--name", client.name, "--cache-dir", str(cache_dir), "--log-level", log_level]
            for key, value in client.options().items():
                args += _flag(key, value)
            path = os.pathsep.join([*map(str, client.pythonpath), os.environ.get("PYTHONPATH", "")]).strip(os.pathsep)
            clients.append(fed.start(client.name, "reward-client", args, env={"PYTHONPATH": path}))
        for service in (trainer, *clients):
            fed.wait_healthy(service, start_timeout)
        console.log(f"trainer at {trainer.address}; {len(clients)} organisations: "
                    f"{', '.join(f'{c.name} at {c.address}' for c in clients)}")
        orchestrator_args = [
            # The job's own state: a run an earlier, interrupted job left is not resumed by this one.
            *common, "--runs-dir", str(runs_dir), "--state-db", str(job_dir / "orchestrator.sqlite3"),
            "--trainer", trainer.address, "--backend", policy.backend,
            "--device", policy.device, "--dtype", policy.dtype, "--api-tokens-file", str(certs / "api-token"),
            "--reward-clients", ",".join(c.address for c in clients), "--auxiliary-size", str(server.auxiliary_size),
            *([] if server.confidence_graph else ["--no-confidence-graph"]),
            *(["--auxiliary", str(server.auxiliary)] if server.auxiliary else []),
        ]
        for name, file in server.datasets.items():
            orchestrator_args += ["--dataset", f"{name}={file}"]
        for name, text in server.dataset_instruction.items():
            orchestrator_args += ["--dataset-instruction", f"{name}={text}"]
        for name, text in server.dataset_system.items():
            orchestrator_args += ["--dataset-system", f"{name}={text}"]
        orchestrator = fed.start("orchestrator", "orchestrator", orchestrator_args)
        fed.wait_healthy(orchestrator, start_timeout)
        console.log(f"orchestrator ({policy.backend}) at {orchestrator.address}; API token in {certs / 'api-token'}")
        token = (certs / "api-token").read_text().strip()
        client = Client(orchestrator.address, identity=fed.identity(), token=token)
        stub = client.stub
        before = after = None
        if evaluation is not None:
            checker = load_checker(evaluation.checker)
            prompt = PromptFormat(instruction=evaluation.instruction, system=evaluation.system or None)
            console.log(f"accuracy before training ({len(rows)} questions of {evaluation.dataset.name}) ...")
            before, unjudged = labelled_accuracy(stub, rows, checker, prompt, evaluation.max_tokens)
            console.log(f"accuracy before training: {before.overall:.3f}"
                        + (f" ({unjudged} answers the checker could not judge)" if unjudged else ""))
        try:
            run = client.create_run(federation.run)  # readable choice names (loss_type = "dr_grpo") welcome
        except FedgrpoError as err:
            raise SystemExit(f"fedgrpo run: the orchestrator refused the [run] table: {err.message}") from None
        console.log(f"run {run.run_id} created; artifacts in {run.artifacts_path}")
        events = (logdir or Path(run.artifacts_path) / "tensorboard") if tensorboard else None
        if events is not None:
            console.log(f"TensorBoard events in {events}: tensorboard --logdir {events.parent}")
        run, steps = follow_run(client, run, console, logdir=events)
        if run.state != pb.RUN_STATE_SUCCEEDED:
            raise SystemExit(f"run {run.run_id} ended {pb.RunState.Name(run.state)}: {run.error} (logs: {log_dir})")
        if evaluation is not None:
            console.log("accuracy after training ...")
            after, _ = labelled_accuracy(stub, rows, checker, prompt, evaluation.max_tokens)
        competence: dict[str, dict[str, float]] = {}
        router: dict[str, dict[str, float]] = {}
        if server.confidence_graph:
            view = stub.GetConfidenceGraph(pb.GetConfidenceGraphRequest())
            for c in view.competences:
                competence.setdefault(c.client, {})[c.domain] = round(c.accuracy, 3)
            console.log(f"probed judging accuracy: {competence}")
            if run.spec.reward_fusion == pb.REWARD_FUSION_ROUTER:  # the router over the run's clients, as it fused them
                run_view = stub.GetConfidenceGraph(pb.GetConfidenceGraphRequest(run_id=run.run_id))
                for w in run_view.router_weights:
                    router.setdefault(w.client, {})[w.domain] = round(w.weight, 3)
                console.log(f"reward router, mean weight per domain: {router}")
    run_dir = Path(run.artifacts_path)
    summary = write_summary(
        run_dir / "summary.json", json_format.MessageToDict(run, preserving_proto_field_name=True), before, after,
        steps, held_out,
        extra={"rewards_by_client": [s.get("rewards_by_client", {}) for s in steps], "competence": competence,
               **({"router_weights": router} if router else {}),
               "seconds": round(time.monotonic() - started, 1), "logs": str(log_dir)},
    )
    plot_rewards(run_dir / "reward_curve.png", steps, f"FedGRPO run {run.run_id} ({policy.model})")
    if before is not None and after is not None:
        console.print(accuracy_table(before, after, held_out["overlaps"] if held_out else None))
        change = summary["accuracy_change"]
        if change is not None:
            shown = {"holds": "an improvement", "does not hold": "a loss", "inconclusive": "within noise"}
            console.print(
                f"change {change['difference']:+.3f}, 95% paired bootstrap interval [{change['interval'][0]:+.3f}, "
                f"{change['interval'][1]:+.3f}] over {change['questions']} questions: "
                f"{shown[change['improvement']]}")
    first, last = summary["reward_mean_first_quarter"], summary["reward_mean_last_quarter"]
    if not (math.isnan(first) or math.isnan(last)):
        console.print(f"mean reward: first quarter {first:.3f} -> last quarter {last:.3f}")
    console.print(f"routing precision (questions whose experts hold their domain): {summary['routing_precision']:.3f}")
    console.print(f"artifacts: {run_dir} (metrics.jsonl, summary.json, reward_curve.png, model/)")
    console.print(f"total time {summary['seconds']:.0f}s; service logs in {log_dir}")
    return summary
