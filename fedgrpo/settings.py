"""Service configuration: pydantic-settings models read from flags and env.

Every service config is a ``ServiceSettings`` subclass: its fields document
themselves (``--help`` prints them), every field can also come from an
environment variable (``<env_prefix><FIELD>``, e.g. ``FEDGRPO_TRAINER_PORT``),
and flags win over the environment. ``load()`` validates once, at start, and
turns a bad configuration into a message that names each field, how to set
it, and what was wrong, instead of a traceback.
"""

from __future__ import annotations

import logging
import sys
from typing import TypeVar

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, CliApp, SettingsConfigDict

S = TypeVar("S", bound=BaseSettings)


class ServiceSettings(BaseSettings):
    """What every service is configured with; subclasses set env_prefix and cli_prog_name."""

    model_config = SettingsConfigDict(cli_kebab_case=True, cli_implicit_flags=True, extra="forbid")

    host: str = Field("127.0.0.1", description="Interface to listen on (0.0.0.0 for all).")
    log_level: str = Field("INFO", description="Python logging level.")


class ConfigError(SystemExit):
    """A service refused to start because its configuration is invalid."""


def describe_errors(cls: type[BaseSettings], err: ValidationError) -> str:
    prefix = cls.model_config.get("env_prefix", "")
    lines = []
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "(config)"
        top = str(e["loc"][0]) if e["loc"] else ""
        how = f"--{top.replace('_', '-')} / {prefix}{top.upper()}" if top else ""
        lines.append(f"  {field} ({how}): {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def load(cls: type[S], argv: list[str] | None = None) -> S:
    """Parse flags (and env) into ``cls``; exit with a readable message if invalid."""
    try:
        return CliApp.run(cls, cli_args=sys.argv[1:] if argv is None else argv)
    except ValidationError as err:
        name = cls.model_config.get("cli_prog_name") or cls.__name__
        raise ConfigError(f"{name}: invalid configuration, refusing to start:\n{describe_errors(cls, err)}")


def setup_logging(level: str = "INFO", name: str = "") -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format=f"%(asctime)s %(levelname)s {name + ' ' if name else ''}%(name)s: %(message)s",
        stream=sys.stderr,
    )
