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
  names one of ``[server].datasets``). Fields it leaves out take the
  orchestrator's defaults (:class:`fedgrpo.services.orchestrator.spec.RunConfig`:
  the one place RunSpec defaults live).
* ``[evaluation]`` (optional): a labelled ``dataset`` file with its
  ``checker``, ``instruction``, ``system`` (a row's own ``system`` cell
  wins) and ``max_tokens``, at most ``per_domain``
  rows of each domain: accuracy before and after training, through the
  orchestrator's Generate. ``held_out = true`` refuses an evaluation file
  that shares a question with the server's datasets or auxiliary set.
* ``[[make]]`` (optional): data files the federation builds from the
  built-in reasoning-gym domains, each exactly what `fedgrpo datasets make`
  writes with the same fields (``domains``, ``size``, ``out``, ``seed``,
  ``unlabelled``, ``exclude``). :func:`make_files` builds the ones that are
  missing or were made by another entry (a ``.NAME.made`` file beside each
  records the command), in order, so an entry may exclude an earlier one's
  file. The services then read only their own files: nothing shares a
  generator at run time.

A key that no table has, a client option `fedgrpo reward-client` does not
know, a RunSpec field that does not exist, or a missing file is a
:class:`FederationFileError` naming the file, the key and, where the file
has it, its line. `federation_run.run_federation` runs a loaded file.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

__all__ = [
    "DEFAULT_FEDERATION", "FederationFile", "FederationFileError", "MakeFile", "load_federation", "make_files",
]

# `fedgrpo run` without --config (and so `make run`): three organisations on built-in domains.
DEFAULT_FEDERATION = Path(__file__).resolve().parents[2] / "examples" / "reasoning" / "federation.toml"


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
    system: str = ""
    max_tokens: int = Field(48, ge=1)
    per_domain: int | None = Field(None, ge=1)
    held_out: bool = False


class MakeFile(_Table):
    """A file made from built-in domains: the fields of `fedgrpo datasets make`."""

    domains: list[str] = Field(min_length=1)
    size: int = Field(ge=1)
    out: Path
    seed: int = 0
    unlabelled: bool = False
    exclude: list[Path] = Field(default_factory=list)

    @field_validator("domains")
    @classmethod
    def _built_in(cls, domains: list[str]) -> list[str]:
        from fedgrpo.tasks import known_domains

        return known_domains(domains)

    def command(self, folder: Path) -> str:
        """The `fedgrpo datasets make` command that writes this file (paths as given in the file)."""
        def rel(p: Path) -> str:
            return str(p.relative_to(folder)) if p.is_relative_to(folder) else str(p)

        words = ["fedgrpo", "datasets", "make", ",".join(self.domains), "--size", str(self.size),
                 "--out", rel(self.out), "--seed", str(self.seed)]
        words += ["--unlabelled"] if self.unlabelled else []
        for file in self.exclude:
            words += ["--exclude", rel(file)]
        return shlex.join(words)


class FederationFile(_Table):
    policy: Policy = Field(default_factory=Policy)
    server: Server = Field(default_factory=Server)
    clients: list[Client] = Field(min_length=1)
    run: dict[str, Any] = Field(default_factory=dict)
    evaluation: Evaluation | None = None
    make: list[MakeFile] = Field(default_factory=list)
    folder: Path = Field(Path("."), exclude=True)
    """Where relative paths were taken from (set by load_federation; not a key of the file)."""


def line_of(text: str, loc: Sequence[str | int]) -> int | None:
    """1-based line of the TOML key at ``loc`` (e.g. ("clients", 1, "chekcer")), or None when not found.

    Follows tables (``[run]``), arrays of tables (``[[clients]]``, the n-th one) and keys (``key =``)
    within the table they belong to; a key the file does not spell out (a default, or one inside an
    inline table) is reported at the line of what holds it."""
    lines = text.splitlines()
    header = re.compile(r"^\s*\[")
    begin, end, found = 0, len(lines), None
    table: list[str] = []
    for part in loc:
        if isinstance(part, int):
            array = re.compile(rf"^\s*\[\[\s*{re.escape('.'.join(table))}\s*\]\]")
            hits = [i for i, line in enumerate(lines) if array.match(line)]
            if part >= len(hits):
                return None
            found = begin = hits[part]
            end = next((i for i in range(begin + 1, len(lines)) if header.match(lines[i])), len(lines))
            continue
        table.append(part)
        named = re.compile(rf"^\s*\[+\s*{re.escape('.'.join(table))}\s*\]+")
        key = re.compile(rf"^\s*{re.escape(part)}\s*=")
        hit = next((i for i in range(begin, end) if key.match(lines[i])), None)
        if hit is None:
            hit = next((i for i, line in enumerate(lines) if named.match(line)), None)
            if hit is not None:
                begin = hit + 1
                end = next((i for i in range(begin, len(lines)) if header.match(lines[i])), len(lines))
        if hit is None:
            break
        found = hit
    return None if found is None else found + 1


def _where(path: Path, text: str, loc: Sequence[str | int]) -> str:
    line = line_of(text, loc)
    return f"{path}{f', line {line}' if line else ''}"


def _dotted(loc: Sequence[str | int]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _paths_from(folder: Path, value: Path) -> Path:
    return value if value.is_absolute() else folder / value


def load_federation(path: Path) -> FederationFile:
    """Read and check ``path`` (see module docstring)."""
    from pydantic_settings import BaseSettings, TomlConfigSettingsSource

    from fedgrpo.services.orchestrator.spec import RunConfig
    from fedgrpo.services.reward_client.config import RewardClientSettings

    path = Path(path)
    if not path.is_file():
        raise FederationFileError(f"{path}: no such file")
    text = path.read_text(errors="replace")

    class _Source(BaseSettings):
        pass

    try:
        raw = TomlConfigSettingsSource(_Source, toml_file=path)()
    except Exception as err:  # tomllib's TOMLDecodeError names the line
        raise FederationFileError(f"{path}: not TOML: {err}") from None
    if "folder" in raw:
        raise FederationFileError(f"{_where(path, text, ['folder'])}: folder: not a key of a federation file")
    try:
        federation = FederationFile.model_validate(raw)
    except ValidationError as err:
        problems = "; ".join(
            f"{_where(path, text, e['loc'])}: {_dotted(e['loc'])}: {e['msg']}" for e in err.errors()
        )
        raise FederationFileError(problems) from None
    folder = federation.folder = path.resolve().parent
    known_options = set(RewardClientSettings.model_fields) - {"name", "host", "port", "plaintext", "orchestrator"}
    for i, client in enumerate(federation.clients):
        unknown = sorted(set(client.options()) - known_options)
        if unknown:
            raise FederationFileError(
                f"{_where(path, text, ['clients', i, unknown[0]])}: clients[{i}] ({client.name}): unknown "
                f"option(s) {unknown}; see `fedgrpo reward-client --help`"
            )
        client.pythonpath = [_paths_from(folder, p) for p in client.pythonpath]
        if "labels" in client.options():
            setattr(client, "labels", str(_paths_from(folder, Path(client.options()["labels"]))))
        model = client.options().get("reward_model")
        if model and model != "tiny-reward-model":
            setattr(client, "reward_model", str(_paths_from(folder, Path(model))))
    unknown = sorted(set(federation.run) - set(RunConfig.model_fields))
    if unknown:
        raise FederationFileError(f"{_where(path, text, ['run', unknown[0]])}: run: unknown RunSpec field(s) {unknown}")
    try:
        RunConfig.model_validate(federation.run)
    except ValidationError as err:
        e = err.errors()[0]
        raise FederationFileError(
            f"{_where(path, text, ['run', *e['loc']])}: run.{_dotted(e['loc'])}: {e['msg']} (got {e.get('input')!r})"
        ) from None
    server = federation.server
    server.datasets = {name: _paths_from(folder, p) for name, p in server.datasets.items()}
    if server.auxiliary is not None:
        server.auxiliary = _paths_from(folder, server.auxiliary)
    if federation.evaluation is not None:
        federation.evaluation.dataset = _paths_from(folder, federation.evaluation.dataset)
    made: set[Path] = set()
    for i, entry in enumerate(federation.make):
        entry.out = _paths_from(folder, entry.out)
        entry.exclude = [_paths_from(folder, p) for p in entry.exclude]
        for file in entry.exclude:
            if file not in made and not file.exists():
                raise FederationFileError(
                    f"{_where(path, text, ['make', i, 'exclude'])}: make[{i}].exclude: {file}: no such file, and "
                    "no earlier [[make]] entry makes it"
                )
        made.add(entry.out)
    for loc, file in [
        *((["server", "datasets"], p) for p in server.datasets.values()),
        *(((["server", "auxiliary"], server.auxiliary),) if server.auxiliary else ()),
        *(((["evaluation", "dataset"], federation.evaluation.dataset),) if federation.evaluation else ()),
        *((["clients", i, "labels"], Path(c.options()["labels"])) for i, c in enumerate(federation.clients)
          if "labels" in c.options()),
    ]:
        if file not in made and not Path(file).exists():
            raise FederationFileError(
                f"{_where(path, text, loc)}: {_dotted(loc)}: {file}: no such file or folder (and no [[make]] entry "
                "makes it)"
            )
    dataset = federation.run.get("dataset")
    if dataset and dataset not in server.datasets:
        raise FederationFileError(
            f"{_where(path, text, ['run', 'dataset'])}: run.dataset {dataset!r} is not in server.datasets "
            f"{sorted(server.datasets)}"
        )
    return federation


def make_files(federation: FederationFile, say: Callable[[str], None] = print) -> list[Path]:
    """Build each ``[[make]]`` file that is missing or stale, in order; returns the ones built."""
    from fedgrpo.data.make import make_file

    built: list[Path] = []
    for entry in federation.make:
        command = entry.command(federation.folder)
        record = entry.out.with_name(f".{entry.out.name}.made")
        current = entry.out.exists() and record.exists() and record.read_text().strip() == command
        if current and not set(entry.exclude) & set(built):
            continue
        say(f"making {entry.out}: {command}")
        try:
            count = make_file(entry.domains, entry.size, entry.out, entry.seed, not entry.unlabelled, entry.exclude)
        except ValueError as err:
            raise FederationFileError(f"[[make]] {command}: {err}") from None
        record.write_text(command + "\n")
        say(f"  {count} rows")
        built.append(entry.out)
    return built
