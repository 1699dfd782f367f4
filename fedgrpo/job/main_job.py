"""`fedgrpo run`: a whole federation on this machine, end to end, described by one file.

Without ``--config`` it runs the main job's federation,
``examples/reasoning/federation.toml`` (what `make run` runs): SmolLM2-135M
on CPU, three organisations each holding two built-in reasoning domains'
labels in their own files, ~10 minutes. ``--config FILE`` runs any other
(see :mod:`fedgrpo.job.federation_file`); ``--model``, ``--backend``,
``--device``, ``--dtype``, ``--spec KEY=VALUE`` and ``--eval-questions``
override the file's ``[policy]``, ``[run]`` and ``[evaluation]``. The run
spec's defaults are the orchestrator's (``RunConfig``): the file states
what it changes. ``--report-to tensorboard`` also writes the steps' metrics
as TensorBoard events (``runs/<run id>/tensorboard/``, or ``--logdir``).

The results land in ``runs/<run id>/`` on this machine. A run on an
orchestrator elsewhere (a long-lived deployment, docker compose) is fetched
from any machine with its CA and an API token: ``fedgrpo runs download RUN
--out DIR [--path model/]`` (``Client.download``; the API's
DownloadRunArtifacts streams the same files, each checked by its SHA-256).
"""

from __future__ import annotations

import json
import logging
import time
import typing
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from fedgrpo.settings import NamedValues

from .federation_file import DEFAULT_FEDERATION, FederationFile

log = logging.getLogger(__name__)


class JobSettings(BaseSettings):
    """`fedgrpo run`: a federation file, and what to change in it for this run."""

    model_config = SettingsConfigDict(
        env_prefix="FEDGRPO_RUN_", cli_prog_name="fedgrpo run", cli_kebab_case=True,
        cli_implicit_flags=True, extra="forbid",
    )

    config: Path = Field(
        DEFAULT_FEDERATION,
        description="A whole federation in one TOML file: the policy, the server's datasets, each organisation's "
        "data, checker and models, the run spec (examples/clinic/federation.toml is one to copy). Default: the "
        "main job's, examples/reasoning/federation.toml.",
    )
    model: str | None = Field(None, description="Policy (smollm2-135m-instruct, tiny-llama or a HF folder) instead "
                              "of the file's [policy] model.")
    backend: Literal["vllm", "transformers"] | None = Field(None, description="Rollout engine instead of the file's.")
    device: Literal["cpu", "cuda"] | None = Field(None, description="Device of engine and trainer instead of the "
                                                  "file's (cuda on a GPU host).")
    dtype: Literal["float32", "bfloat16", "float16"] | None = Field(
        None, description="Weights dtype instead of the file's (bfloat16 on a GPU host).")
    spec: NamedValues = Field(
        default_factory=dict,
        description="KEY=VALUE over the file's [run] table, any RunSpec field (repeat the flag: --spec steps=40 "
        "--spec learning_rate=1e-5).",
    )
    eval_questions: int | None = Field(
        None, ge=1, description="At most this many evaluation questions per domain (default: the file's).")
    runs_dir: Path = Field(Path("runs"), description="Where runs/<run id>/ is written; the job's logs, "
                           "certificates and trainer state go to runs/_federations/<time>/.")
    cache_dir: Path = Field(Path(".cache/models"), description="Prepared base models.")
    start_timeout: float = Field(300.0, gt=0, description="Seconds each service may take to become healthy.")
    log_level: str = Field("INFO", description="Logging level of the services.")
    report_to: Literal["none", "tensorboard"] = Field(
        "none", description="Also write each step's metrics there, as TRL's report_to: tensorboard writes events "
        "(one scalar per metric per step) to --logdir.")
    logdir: Path | None = Field(None, description="TensorBoard events folder (default: the run's folder, "
                                "runs/<run id>/tensorboard/); view with `tensorboard --logdir runs`.")

    def apply(self, federation: FederationFile) -> FederationFile:
        """The federation with this run's overrides; SystemExit naming the flag when one is not valid."""
        from pydantic import ValidationError

        from fedgrpo.services.orchestrator.spec import RunConfig

        for key in ("model", "backend", "device", "dtype"):
            if getattr(self, key) is not None:
                setattr(federation.policy, key, getattr(self, key))
        spec = dict(federation.run)
        for key, text in self.spec.items():
            if key not in RunConfig.model_fields:
                raise SystemExit(
                    f"fedgrpo run: --spec {key}: not a RunSpec field; known: {sorted(RunConfig.model_fields)}"
                )
            spec[key] = _spec_value(key, text)
        try:
            RunConfig.model_validate(spec)
        except ValidationError as err:
            e = err.errors()[0]
            raise SystemExit(f"fedgrpo run: --spec {e['loc'][0]}: {e['msg']} (got {e.get('input')!r})") from None
        federation.run = spec
        if self.eval_questions is not None and federation.evaluation is not None:
            federation.evaluation.per_domain = self.eval_questions
        return federation


def _spec_value(key: str, text: str) -> object:
    """A --spec value as its RunSpec field takes it: lists comma-separated, numbers and booleans as JSON."""
    from fedgrpo.services.orchestrator.spec import RunConfig

    if typing.get_origin(RunConfig.model_fields[key].annotation) is list:
        return [part.strip() for part in text.split(",") if part.strip()]
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def main(argv: list[str] | None = None) -> None:
    from fedgrpo.settings import load, setup_logging

    from .federation_file import FederationFileError, load_federation
    from .federation_run import run_federation

    settings = load(JobSettings, argv)
    setup_logging("WARNING")
    try:
        federation = settings.apply(load_federation(settings.config))
        work = settings.runs_dir / "_federations" / time.strftime("%Y%m%d-%H%M%S")
        run_federation(federation, settings.runs_dir, work, settings.cache_dir, settings.start_timeout,
                       settings.log_level, tensorboard=settings.report_to == "tensorboard", logdir=settings.logdir)
    except FederationFileError as err:
        raise SystemExit(f"fedgrpo run: --config: {err}") from None
