"""One federation, one file: `fedgrpo run --config federation.toml`.

Contract
--------
``load_federation(path)`` reads a TOML file (through pydantic-settings'
TOML source) into a :class:`FederationFile`; every relative path in it is
taken from the file's folder. Tables:

* ``[policy]``: ``model``, ``backend``, ``device``, ``dtype`` (the
  orchestrator's and trainer's options of those names).
* ``[server]``: the orchestrator's own data: ``datasets`` (NAME = PATH),
  ``dataset_instruction``, ``dataset_system`` (NAME = TEXT), ``auxiliary``
  (its labelled file) and ``auxiliary_size``, ``confidence_graph``.
* ``[[clients]]``: one table per organisation, ``name`` plus any option of
  `fedgrpo reward-client` (``labels``, ``checker``, ``reward_model``,
  ``judge_model``, ``domains``, ``evaluator_order``, ...), and
  ``pythonpath``: folders its own checker module is imported from.
* ``[run]``: the RunSpec the job creates (any RunSpec field; ``dataset``
  names one of ``[server].datasets``).
* ``[evaluation]`` (optional): a labelled ``dataset`` file with its
  ``checker``, ``instruction`` and ``max_tokens``: accuracy before and after
  training, through the orchestrator's Generate.

A key that no table has, a client option `fedgrpo reward-client` does not
know, a RunSpec field that does not exist, or a missing file is a
:class:`FederationFileError` naming the file and the key. ``run_federation``
starts the services on loopback (mutual TLS with a development CA in the
job's folder), measures, trains, measures again, and returns a summary.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

__all__ = ["FederationFile", "FederationFileError", "load_federation", "run_federation"]


class FederationFileError(ValueError):
    """A federation file that cannot be used: the file, the key, what was expected."""


class _Table(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Policy(_Table):
    model: str = "smollm2-135m-instruct"
    backend: Literal["vllm", "transformers"] = "vllm"
    device: Literal["cpu", "cuda"] = "cpu"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"


class Server(_Table):
    datasets: dict[str, Path] = Field(default_factory=dict)
    dataset_instruction: dict[str, str] = Field(default_factory=dict)
    dataset_system: dict[str, str] = Field(default_factory=dict)
    auxiliary: Path | None = None
    auxiliary_size: int = Field(100, ge=1)
    confidence_graph: bool = True


class Client(BaseModel):
    """An organisation: its name and `fedgrpo reward-client` options (checked against that command)."""

    model_config = ConfigDict(extra="allow")

    name: str
    pythonpath: list[Path] = Field(default_factory=list)

    @field_validator("pythonpath", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class Evaluation(_Table):
    dataset: Path
    checker: str = "exact"
    instruction: str = ""
    max_tokens: int = Field(48, ge=1)


class FederationFile(_Table):
    policy: Policy = Field(default_factory=Policy)
    server: Server = Field(default_factory=Server)
    clients: list[Client] = Field(min_length=1)
    run: dict[str, Any] = Field(default_factory=dict)
    evaluation: Evaluation | None = None


def _paths_from(folder: Path, value: Path) -> Path:
    return value if value.is_absolute() else folder / value


def load_federation(path: Path) -> FederationFile:
    """Read and check ``path`` (see module docstring)."""
    from pydantic_settings import BaseSettings, TomlConfigSettingsSource

    from services.orchestrator.spec import RunConfig
    from services.reward_client.config import RewardClientSettings

    path = Path(path)
    if not path.is_file():
        raise FederationFileError(f"{path}: no such file")

    class _Source(BaseSettings):
        pass

    try:
        raw = TomlConfigSettingsSource(_Source, toml_file=path)()
    except Exception as err:  # tomllib's TOMLDecodeError names the line
        raise FederationFileError(f"{path}: not TOML: {err}") from None
    try:
        federation = FederationFile.model_validate(raw)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors()
        )
        raise FederationFileError(f"{path}: {problems}") from None
    folder = path.resolve().parent
    known_options = set(RewardClientSettings.model_fields) - {"name", "host", "port", "plaintext", "orchestrator"}
    for i, client in enumerate(federation.clients):
        unknown = sorted(set(client.options()) - known_options)
        if unknown:
            raise FederationFileError(
                f"{path}: clients[{i}] ({client.name}): unknown option(s) {unknown}; "
                "see `fedgrpo reward-client --help`"
            )
        client.pythonpath = [_paths_from(folder, p) for p in client.pythonpath]
        for key in ("labels",):
            if key in client.options():
                setattr(client, key, str(_paths_from(folder, Path(client.options()[key]))))
        model = client.options().get("reward_model")
        if model and model != "tiny-reward-model":
            setattr(client, "reward_model", str(_paths_from(folder, Path(model))))
    unknown = sorted(set(federation.run) - set(RunConfig.model_fields))
    if unknown:
        raise FederationFileError(f"{path}: run: unknown RunSpec field(s) {unknown}")
    try:
        RunConfig.model_validate(federation.run)
    except ValidationError as err:
        e = err.errors()[0]
        raise FederationFileError(
            f"{path}: run.{'.'.join(str(p) for p in e['loc'])}: {e['msg']} (got {e.get('input')!r})"
        ) from None
    server = federation.server
    server.datasets = {name: _paths_from(folder, p) for name, p in server.datasets.items()}
    if server.auxiliary is not None:
        server.auxiliary = _paths_from(folder, server.auxiliary)
    if federation.evaluation is not None:
        federation.evaluation.dataset = _paths_from(folder, federation.evaluation.dataset)
    for where, file in [
        *((f"server.datasets.{n}", p) for n, p in server.datasets.items()),
        *((("server.auxiliary", server.auxiliary),) if server.auxiliary else ()),
        *((("evaluation.dataset", federation.evaluation.dataset),) if federation.evaluation else ()),
        *((f"clients[{i}].labels", Path(c.options()["labels"])) for i, c in enumerate(federation.clients)
          if "labels" in c.options()),
    ]:
        if not Path(file).exists():
            raise FederationFileError(f"{path}: {where}: {file}: no such file or folder")
    dataset = federation.run.get("dataset")
    if dataset and dataset not in server.datasets:
        raise FederationFileError(f"{path}: run.dataset {dataset!r} is not in server.datasets {sorted(server.datasets)}")
    return federation


def _flag(key: str, value: Any) -> list[str]:
    flag = "--" + key.replace("_", "-")
    if isinstance(value, bool):
        return [flag] if value else [f"--no-{key.replace('_', '-')}"]
    if isinstance(value, (list, tuple)):
        return [flag, ",".join(str(v) for v in value)]
    return [flag, str(value)]


def run_federation(
    federation: FederationFile, runs_dir: Path, job_dir: Path, cache_dir: Path, start_timeout: float = 300.0
) -> dict:
    """Start the federation the file describes, train its run, and measure it before and after.

    Runs (artifacts) go to ``runs_dir``; the job's logs, certificates and trainer state to ``job_dir``."""
    import os

    import grpc
    from rich.console import Console

    from fedgrpo import serving
    from fedgrpo.certs import init_federation
    from fedgrpo.data.checkers import load_checker
    from fedgrpo.data.files import read_rows
    from fedgrpo.models import resolve_model
    from fedgrpo.v1 import orchestrator_pb2 as pb
    from fedgrpo.v1 import orchestrator_pb2_grpc as pb_grpc

    from .launcher import Federation
    from .main_job import follow_run

    console = Console()
    started = time.monotonic()
    policy, server = federation.policy, federation.server
    console.log(f"preparing model {policy.model} ...")
    resolve_model(policy.model, cache_dir)
    certs = job_dir / "certs"
    init_federation(certs, clients=[c.name for c in federation.clients])
    common = ["--model", policy.model, "--cache-dir", str(cache_dir)]
    with Federation(job_dir / "logs", certs=certs) as fed:
        trainer = fed.start("trainer", "trainer", [*common, "--state-dir", str(job_dir / "trainer"),
                                                   "--device", policy.device, "--dtype", policy.dtype])
        clients = []
        for client in federation.clients:
            args = ["--name", client.name, "--cache-dir", str(cache_dir)]
            for key, value in client.options().items():
                args += _flag(key, value)
            path = os.pathsep.join([*map(str, client.pythonpath), os.environ.get("PYTHONPATH", "")]).strip(os.pathsep)
            clients.append(fed.start(client.name, "reward-client", args, env={"PYTHONPATH": path}))
        for service in (trainer, *clients):
            fed.wait_healthy(service, start_timeout)
        orchestrator_args = [
            *common, "--runs-dir", str(runs_dir), "--trainer", trainer.address, "--backend", policy.backend,
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
        console.log(f"{len(clients)} organisations ({', '.join(c.name for c in federation.clients)}), "
                    f"orchestrator at {orchestrator.address}")
        token = (certs / "api-token").read_text().strip()
        stub = pb_grpc.OrchestratorServiceStub(serving.channel(orchestrator.address, fed.identity(), token=token))
        evaluation = federation.evaluation
        before = after = None
        if evaluation is not None:
            rows = read_rows(evaluation.dataset, labelled=True)
            checker = load_checker(evaluation.checker)
            before = generate_accuracy(stub, rows, checker, evaluation.instruction, evaluation.max_tokens)
            console.log(f"accuracy before training on {evaluation.dataset.name}: {before:.3f}")
        try:
            run = stub.CreateRun(pb.CreateRunRequest(spec=pb.RunSpec(**federation.run)))
        except grpc.RpcError as err:
            raise SystemExit(f"fedgrpo run: the orchestrator refused the [run] table: {err.details()}") from None
        console.log(f"run {run.run_id} created; artifacts in {run.artifacts_path}")
        run, steps = follow_run(stub, run, console)
        if run.state != pb.RUN_STATE_SUCCEEDED:
            raise SystemExit(f"run {run.run_id} ended {pb.RunState.Name(run.state)}: {run.error} "
                             f"(logs: {job_dir / 'logs'})")
        if evaluation is not None:
            after = generate_accuracy(stub, rows, checker, evaluation.instruction, evaluation.max_tokens)
            console.log(f"accuracy after training: {after:.3f}")
        competence: dict[str, dict[str, float]] = {}
        if server.confidence_graph:
            for c in stub.GetConfidenceGraph(pb.GetConfidenceGraphRequest()).competences:
                competence.setdefault(c.client, {})[c.domain] = round(c.accuracy, 3)
            console.log(f"probed judging accuracy: {competence}")
    summary = {
        "run_id": run.run_id, "steps": len(steps), "artifacts": run.artifacts_path,
        "rewards_by_client": [s.get("rewards_by_client", {}) for s in steps],
        "accuracy_before": before, "accuracy_after": after, "competence": competence,
        "seconds": round(time.monotonic() - started, 1),
    }
    console.print(f"run {run.run_id}: {len(steps)} steps; accuracy before {before} after {after}; "
                  f"{summary['seconds']:.0f}s; logs in {job_dir / 'logs'}")
    return summary


def generate_accuracy(stub, rows, checker, instruction: str, max_tokens: int) -> float:  # type: ignore[no-untyped-def]
    """Share of labelled rows whose greedy answer (the orchestrator's Generate) the checker finds right."""
    import math

    from fedgrpo.tasks import CORRECT_THRESHOLD, PromptFormat, question_id
    from fedgrpo.v1 import orchestrator_pb2 as pb

    prompt = PromptFormat(instruction=instruction)
    right = judged = 0
    for start in range(0, len(rows), 100):
        chunk = rows[start:start + 100]
        reply = stub.Generate(pb.GenerateRequest(
            prompts=[prompt.user_text(r.question) for r in chunk], n=1, temperature=0.0, max_tokens=max_tokens,
        ), timeout=600)
        for row, result in zip(chunk, reply.results, strict=True):
            domain = row.domain or ""
            reward = checker(result.completions[0].text, row.answer or "", question=row.question, domain=domain,
                             metadata=row.metadata, question_id=question_id(domain, row.question))
            if not math.isnan(reward):
                judged += 1
                right += reward >= CORRECT_THRESHOLD
    return right / judged if judged else math.nan
