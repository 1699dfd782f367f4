"""`fedgrpo run`: the whole federation on this machine, end to end.

Starts the trainer, the reward clients and the orchestrator as separate
processes on loopback ports, measures held-out accuracy, creates a run
through the public gRPC API, follows it with a live progress bar, measures
again, and writes ``runs/<run id>/`` (metrics.jsonl and model/ from the
orchestrator; summary.json and reward_curve.png from here).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Literal

from google.protobuf import json_format
from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from fedgrpo import serving
from fedgrpo.v1 import orchestrator_pb2 as pb
from fedgrpo.v1 import orchestrator_pb2_grpc as pb_grpc

from .evaluate import held_out_accuracy
from .held_out import disjoint_held_out
from .launcher import Federation
from .report import accuracy_table, plot_rewards, write_summary

log = logging.getLogger(__name__)


class JobSettings(BaseSettings):
    """The main job: defaults run SmolLM2-135M on CPU with three reward clients in ~10 minutes."""

    model_config = SettingsConfigDict(
        env_prefix="FEDGRPO_RUN_", cli_prog_name="fedgrpo run", cli_kebab_case=True,
        cli_implicit_flags=True, extra="forbid",
    )

    config: Path | None = Field(
        None,
        description="A whole federation in one TOML file (policy, the server's datasets, each organisation's data, "
        "checker and models, the run spec): see examples/clinic/federation.toml. Only runs_dir, cache_dir and "
        "start_timeout of these options apply then.",
    )
    model: str = Field("smollm2-135m-instruct", description="Policy: smollm2-135m-instruct, tiny-llama or a HF folder.")
    backend: Literal["vllm", "transformers"] = Field("vllm", description="Rollout engine.")
    device: Literal["cpu", "cuda"] = Field("cpu", description="Device of engine and trainer.")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="Weights dtype (bfloat16 on a GPU).")
    clients: list[str] = Field(
        # Domains with question spaces far larger than the bank, so held-out questions are new ones.
        ["add2,letter_counting", "letter_counting,chain3", "chain3,add2"],
        description="One entry per reward client: the domains it holds, comma-separated "
        "(on the command line: JSON, e.g. '[\"add1,sub1\",\"mul1\"]').",
    )
    tasks: list[str] = Field(default_factory=list, description="Domains to train on; default: every client domain.")
    steps: int = Field(24, ge=1, description="Training steps.")
    questions_per_step: int = Field(4, ge=1, description="Questions per step.")
    candidates_per_question: int = Field(8, ge=2, description="Candidates per question (G).")
    experts_per_question: int = Field(2, ge=1, description="Expert reward clients per question (M).")
    expert_selection: Literal["confidence_graph", "domain", "random", "all"] = Field(
        "confidence_graph", description="How each question's expert reward clients are chosen."
    )
    reward_reading: Literal["consensus", "pooled"] = Field("consensus", description="How expert rewards combine.")
    certs_dir: Path = Field(
        Path(".cache/certs"),
        description="Development CA and identities (made if missing): every connection is mutual TLS and the "
        "API is called with the token in <certs_dir>/api-token.",
    )
    plaintext: bool = Field(False, description="Development: no TLS between the services (all on loopback).")
    learning_rate: float = Field(2e-5, gt=0, description="AdamW learning rate.")
    loss_type: Literal["grpo", "bnpo", "dr_grpo", "dapo"] = Field("bnpo", description="Loss aggregation.")
    beta: float = Field(0.0, ge=0, description="KL weight to the frozen reference (0: no reference).")
    temperature: float = Field(1.0, gt=0, description="Rollout sampling temperature.")
    max_tokens: int = Field(32, ge=1, description="Longest completion, in tokens.")
    updates_per_batch: int = Field(1, ge=1, description="Optimiser steps per batch.")
    seed: int = Field(0, description="Question sampling and engine seed.")
    eval_questions: int = Field(
        100, ge=1, description="Held-out questions per domain, before and after; none of them is in the training "
        "pool or the auxiliary set (a domain too small to supply them is refused).",
    )
    runs_dir: Path = Field(Path("runs"), description="Where runs/<run id>/ is written.")
    cache_dir: Path = Field(Path(".cache/models"), description="Prepared base models.")
    state_dir: Path = Field(Path(".cache/trainer"), description="Trainer snapshots and checkpoints.")
    start_timeout: float = Field(300.0, gt=0, description="Seconds each service may take to become healthy.")
    trainer_threads: int = Field(0, ge=0, description="torch threads of the trainer (0: all cores).")
    log_level: str = Field("INFO", description="Logging level of the services.")

    @model_validator(mode="after")
    def _check(self) -> JobSettings:
        from fedgrpo.tasks import DOMAINS

        for entry in self.clients:
            for d in entry.split(","):
                if d not in DOMAINS:
                    raise ValueError(f"clients: unknown domain {d!r} in {entry!r}; known: {sorted(DOMAINS)}")
        if self.experts_per_question > len(self.clients):
            raise ValueError(f"experts_per_question {self.experts_per_question} > {len(self.clients)} clients")
        return self

    def task_list(self) -> list[str]:
        if self.tasks:
            return self.tasks
        seen: list[str] = []
        for entry in self.clients:
            seen += [d for d in entry.split(",") if d not in seen]
        return seen


def _start_federation(fed: Federation, s: JobSettings, console: Console) -> str:
    common = ["--model", s.model, "--cache-dir", str(s.cache_dir), "--log-level", s.log_level]
    trainer_args = [*common, "--state-dir", str(s.state_dir), "--device", s.device, "--dtype", s.dtype]
    if s.trainer_threads:
        trainer_args += ["--torch-threads", str(s.trainer_threads)]
    trainer = fed.start("trainer", "trainer", trainer_args)
    clients = [
        fed.start(f"client-{i}", "reward-client", ["--name", f"client-{i}", "--domains", domains, "--log-level", s.log_level])
        for i, domains in enumerate(s.clients)
    ]
    for c in [trainer, *clients]:
        fed.wait_healthy(c, s.start_timeout)
    console.log(f"trainer at {trainer.address}; reward clients {', '.join(c.address for c in clients)}")
    orchestrator = fed.start(
        "orchestrator", "orchestrator",
        [*common, "--runs-dir", str(s.runs_dir), "--trainer", trainer.address, "--backend", s.backend,
         "--device", s.device, "--dtype", s.dtype, "--seed", str(s.seed),
         "--reward-clients", ",".join(c.address for c in clients),
         *([] if s.plaintext else ["--api-tokens-file", str(s.certs_dir / "api-token")])],
    )
    fed.wait_healthy(orchestrator, s.start_timeout)
    console.log(f"orchestrator ({s.backend}) at {orchestrator.address}")
    return orchestrator.address


def follow_run(
    stub: pb_grpc.OrchestratorServiceStub, run: pb.Run, console: Console, label: str = "training"
) -> tuple[pb.Run, list[dict]]:
    """Watch a run to its end with a live progress bar; returns the final run and every step's metrics."""
    steps: list[dict] = []
    columns = [
        TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[figures]}"),
        TimeElapsedColumn(), TimeRemainingColumn(),
    ]
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("run", total=run.spec.steps, figures="starting")
        for event in stub.WatchRun(pb.WatchRunRequest(run_id=run.run_id)):
            if event.HasField("step"):
                m = json_format.MessageToDict(
                    event.step, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
                )
                steps.append(m)
                acc = sum(s["accuracy"] * s["rewards_received"] for s in steps) / max(
                    1, sum(s["rewards_received"] for s in steps))
                progress.update(
                    task, completed=event.step.step,
                    figures=f"reward {event.step.reward_mean:.2f} | correct so far {acc:.2f} | {event.step.step_seconds:.0f}s/step",
                )
            else:
                run = event.run
    return run, steps


def run_job(s: JobSettings) -> dict:
    console = Console()
    started = time.monotonic()
    tasks = s.task_list()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from fedgrpo.models import resolve_model

    try:
        held_out = disjoint_held_out(tasks, s.eval_questions)
    except ValueError as err:
        raise SystemExit(f"fedgrpo run: {err}") from None
    console.log(f"held-out: {held_out.total} questions ({held_out.per_domain}), overlaps with the training pool "
                f"and the auxiliary set {held_out.overlaps}")
    console.log(f"preparing model {s.model} ...")
    resolve_model(s.model, s.cache_dir)  # once here, so services never race to convert it
    log_dir = s.runs_dir / "_logs" / time.strftime("%Y%m%d-%H%M%S")
    certs = None
    if not s.plaintext:
        from fedgrpo.certs import init_federation

        init_federation(s.certs_dir, clients=[f"client-{i}" for i in range(len(s.clients))])
        certs = s.certs_dir
        console.log(f"mutual TLS between the services; identities and API token in {certs}")
    with Federation(log_dir, certs=certs) as fed:
        address = _start_federation(fed, s, console)
        token = None if certs is None else (certs / "api-token").read_text().strip()
        stub = pb_grpc.OrchestratorServiceStub(serving.channel(address, fed.identity(), token=token))
        console.log(f"held-out accuracy before training ({s.eval_questions} questions per domain) ...")
        before = held_out_accuracy(stub, held_out.questions, s.max_tokens)
        spec = pb.RunSpec(
            tasks=tasks, steps=s.steps, questions_per_step=s.questions_per_step,
            candidates_per_question=s.candidates_per_question, experts_per_question=s.experts_per_question,
            learning_rate=s.learning_rate, loss_type=s.loss_type, beta=s.beta, temperature=s.temperature,
            max_tokens=s.max_tokens, updates_per_batch=s.updates_per_batch, seed=s.seed,
            expert_selection=s.expert_selection, reward_reading=s.reward_reading,
        )
        run = stub.CreateRun(pb.CreateRunRequest(spec=spec))
        console.log(f"run {run.run_id} created; artifacts in {run.artifacts_path}")
        run, steps = follow_run(stub, run, console)
        if run.state != pb.RUN_STATE_SUCCEEDED:
            raise SystemExit(f"run {run.run_id} ended {pb.RunState.Name(run.state)}: {run.error} (logs: {log_dir})")
        console.log("held-out accuracy after training ...")
        after = held_out_accuracy(stub, held_out.questions, s.max_tokens)
    run_dir = Path(run.artifacts_path)
    run_dict = json_format.MessageToDict(run, preserving_proto_field_name=True)
    summary = write_summary(run_dir / "summary.json", run_dict, before, after, steps, held_out.to_json())
    plot_rewards(run_dir / "reward_curve.png", steps, f"FedGRPO run {run.run_id} ({s.model})")
    console.print(accuracy_table(before, after, held_out.overlaps))
    console.print(
        f"mean reward: first quarter {summary['reward_mean_first_quarter']:.3f} -> "
        f"last quarter {summary['reward_mean_last_quarter']:.3f}"
    )
    console.print(f"routing precision (questions whose experts hold their domain): {summary['routing_precision']:.3f}")
    console.print(f"artifacts: {run_dir} (metrics.jsonl, summary.json, reward_curve.png, model/)")
    console.print(f"total time {time.monotonic() - started:.0f}s; service logs in {log_dir}")
    return summary


def main(argv: list[str] | None = None) -> None:
    from fedgrpo.settings import load, setup_logging

    settings = load(JobSettings, argv)
    setup_logging("WARNING")
    if settings.config is not None:
        from .federation_file import FederationFileError, load_federation, run_federation

        try:
            federation = load_federation(settings.config)
        except FederationFileError as err:
            raise SystemExit(f"fedgrpo run: --config: {err}") from None
        work = settings.runs_dir / "_federations" / time.strftime("%Y%m%d-%H%M%S")
        run_federation(federation, settings.runs_dir, work, settings.cache_dir, settings.start_timeout)
        return
    run_job(settings)
