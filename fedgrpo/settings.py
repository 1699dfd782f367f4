"""Service configuration: pydantic-settings models read from flags and env.

Every service config is a ``ServiceSettings`` subclass: its fields document
themselves (``--help`` prints them), every field can also come from an
environment variable (``<env_prefix><FIELD>``, e.g. ``FEDGRPO_TRAINER_PORT``),
and flags win over the environment. ``load()`` validates once, at start, and
turns a bad configuration into a message that names each field, how to set
it, and what was wrong, instead of a traceback.

Every service also shares the transport settings: an identity for TLS
(``tls_cert``, ``tls_key``, ``tls_ca``) or ``plaintext`` (development on
loopback only), the request bounds (``max_message_bytes``, ``rate_limit``),
the serving bounds (``max_concurrent_rpcs``, ``auth_failure_limit``,
``reflection``) and observability (``metrics_port``, ``metrics_host``,
``log_format``).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import BeforeValidator, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, CliApp, NoDecode, SettingsConfigDict

S = TypeVar("S", bound=BaseSettings)

# A member's, dataset's or domain's name: 1-64 letters, digits, '_', '-', '.' (use fullmatch: no trailing newline).
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def split_commas(value: Any) -> Any:
    """``"a,b"`` (flag or environment), ``'["a","b"]'`` or a list -> a list; blank entries dropped."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except json.JSONDecodeError as err:
                raise ValueError(f"not a JSON list ({err}); write the values comma-separated: a,b") from None
        else:
            value = text.split(",")
    if isinstance(value, (list, tuple)):
        return [v.strip() if isinstance(v, str) else v for v in value if not (isinstance(v, str) and not v.strip())]
    return value


# A list option written comma-separated, on the command line and in the environment alike.
CommaList = Annotated[list[str], NoDecode, BeforeValidator(split_commas)]


_PAIR_START = re.compile(r",(?=\s*[A-Za-z0-9][A-Za-z0-9_.-]*=)")


def split_named(value: Any) -> Any:
    """``"a=x,b=y"`` (environment), a repeated ``--flag a=x`` (parsed by the CLI) or a mapping -> a dict."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("{"):
            try:
                return json.loads(text)
            except json.JSONDecodeError as err:
                raise ValueError(f"not a JSON object ({err}); write NAME=VALUE pairs comma-separated") from None
        named = {}
        # A comma starts a new pair only before NAME=, so a value may hold commas ("Answer briefly, e.g. A00.").
        for part in (p for p in _PAIR_START.split(text) if p.strip()):
            name, equals, item = part.partition("=")
            if not equals:
                raise ValueError(f"{part.strip()!r}: expected NAME=VALUE")
            named[name.strip()] = item.strip()
        return named
    return value


# NAME=VALUE options: `--flag a=x --flag b=y`, `--flag a=x,b=y`, or `a=x,b=y` in the environment.
NamedValues = Annotated[dict[str, str], NoDecode, BeforeValidator(split_named)]


def rate_limit_notation(value: str, example: str) -> str:
    """``value`` if it parses in the ``limits`` notation, else ValueError saying how to write it (``example``)."""
    from limits import parse_many

    try:
        parse_many(value)
    except ValueError as err:
        raise ValueError(f"{err}; write e.g. {example}") from None
    return value


class ServiceSettings(BaseSettings):
    """What every service is configured with; subclasses set env_prefix and cli_prog_name."""

    model_config = SettingsConfigDict(cli_kebab_case=True, cli_implicit_flags=True, extra="forbid")
    # The role (fedgrpo.certs.ROLES) this service's certificate must carry; None: not checked.
    certificate_role: ClassVar[str | None] = None

    host: str = Field("127.0.0.1", description="Interface to listen on (0.0.0.0 for all).")
    log_level: str = Field("INFO", description="Python logging level.")
    log_format: Literal["text", "json"] = Field(
        "text", description="Log lines as text, or one JSON object per line (for log collectors)."
    )
    metrics_port: int = Field(
        0, ge=0, le=65535, description="Port of the Prometheus /metrics endpoint; 0: no endpoint."
    )
    metrics_host: str = Field(
        "127.0.0.1",
        description="Interface of the /metrics endpoint, which has no authentication: loopback unless a "
        "scraper on a trusted network needs it (e.g. 0.0.0.0 inside a container on the compose network).",
    )
    max_concurrent_rpcs: int = Field(
        128, ge=1, le=100_000,
        description="Calls each port holds at once, running or waiting for one of the service's worker threads "
        "(orchestrator 32, reward client 16, trainer 4); more are refused at once with RESOURCE_EXHAUSTED "
        "instead of waiting without bound. Each joined reward client holds one long poll on the federation port.",
    )
    reflection: bool = Field(
        False,
        description="Serve gRPC server reflection (for grpcurl without the .proto files). Off by default: a "
        "reflection stream is open to anyone who can connect and holds a worker thread while open.",
    )
    auth_failure_limit: str = Field(
        "10/minute",
        description="Failed bearer-token checks accepted per peer address, in the `limits` notation; past it, "
        "every call from that address that needs a token is refused with RESOURCE_EXHAUSTED until the window "
        "passes, so tokens cannot be guessed quickly.",
    )
    plaintext: bool = Field(
        False,
        description="Development only: no TLS and no certificates. Refused unless host and every address "
        "this service dials are loopback.",
    )
    tls_cert: Path | None = Field(
        None, description="This service's certificate (PEM); its common name is its identity."
    )
    tls_key: Path | None = Field(None, description="The private key of tls_cert (PEM).")
    tls_ca: Path | None = Field(
        None, description="The federation's CA certificate (PEM): peers must present a certificate it signed."
    )
    max_message_bytes: int = Field(
        16 * 1024 * 1024, ge=1024, le=1024**3,
        description="Largest gRPC message accepted or sent; a larger one is refused with RESOURCE_EXHAUSTED.",
    )
    rate_limit: str = Field(
        "1000/second",
        description="Requests accepted per peer (identity, else address), in the `limits` notation, e.g. "
        "'100/second;5000/minute'; more are refused with RESOURCE_EXHAUSTED. Health checks are exempt.",
    )

    @field_validator("rate_limit", "auth_failure_limit")
    @classmethod
    def _parse_rate(cls, value: str) -> str:
        return rate_limit_notation(value, "100/second or 100/second;5000/minute") if value.strip() else value

    @model_validator(mode="after")
    def _transport(self) -> ServiceSettings:
        from fedgrpo.security import is_loopback

        files = {"tls_cert": self.tls_cert, "tls_key": self.tls_key, "tls_ca": self.tls_ca}
        if self.plaintext:
            if any(files.values()):
                raise ValueError("plaintext is set together with TLS files: choose one (drop --plaintext to use TLS)")
            if not is_loopback(self.host):
                raise ValueError(
                    f"plaintext is for development on loopback only, but host is {self.host!r}: give "
                    "--tls-cert, --tls-key and --tls-ca (`make certs` writes a development CA), or --host 127.0.0.1"
                )
            for field, address in self.dialed_addresses():
                if not is_loopback(address.rsplit(":", 1)[0]):
                    raise ValueError(
                        f"plaintext is for development on loopback only, but {field} {address!r} is not loopback: "
                        "give --tls-cert, --tls-key and --tls-ca"
                    )
            return self
        missing = [name for name, path in files.items() if path is None]
        if missing:
            raise ValueError(
                f"no transport security: give --tls-cert, --tls-key and --tls-ca (missing {', '.join(missing)}; "
                "`make certs` writes a development CA and identities to .cache/certs), or --plaintext for "
                "development on loopback"
            )
        for name, path in files.items():
            if not path.is_file():  # type: ignore[union-attr]
                raise ValueError(f"{name}: {str(path)!r} is not a readable file")
            if b"-----BEGIN" not in path.read_bytes()[:4096]:  # type: ignore[union-attr]
                raise ValueError(f"{name}: {str(path)!r} is not a PEM file")
        if self.certificate_role is not None:
            self._check_role(self.certificate_role)
        return self

    def _check_role(self, expected: str) -> None:
        """Peers refuse a certificate without the right role: say so at start, not at the first call."""
        from fedgrpo.certs import role_of

        try:
            role = role_of(self.tls_cert.read_bytes())  # type: ignore[union-attr]
        except ValueError as err:
            raise ValueError(f"tls_cert: {str(self.tls_cert)!r} is not a certificate ({err})") from None
        if role is None:
            raise ValueError(
                f"tls_cert: {str(self.tls_cert)!r} carries no role (issued before roles): re-run `make certs` "
                f"(fedgrpo certs init) to reissue it, or `fedgrpo certs issue NAME --role {expected}`"
            )
        if role != expected:
            raise ValueError(f"tls_cert: {str(self.tls_cert)!r} has role {role}, this service needs role {expected}")

    def dialed_addresses(self) -> list[tuple[str, str]]:
        """(field, host:port) of every service this one connects to; subclasses list theirs."""
        return []

    def identity(self):  # type: ignore[no-untyped-def]
        """This service's TLS identity, or None with plaintext."""
        from fedgrpo.security import Identity

        if self.plaintext:
            return None
        return Identity.load(self.tls_cert, self.tls_key, self.tls_ca)  # type: ignore[arg-type]


class ConfigError(SystemExit):
    """A service refused to start because its configuration is invalid."""


def describe_errors(cls: type[BaseSettings], err: ValidationError) -> str:
    prefix = cls.model_config.get("env_prefix", "")
    lines = []
    for e in err.errors():
        message = e["msg"].removeprefix("Value error, ")
        if not e["loc"]:  # a rule across fields: the message names them
            lines.append(f"  {message}")
            continue
        field = ".".join(str(p) for p in e["loc"])
        top = str(e["loc"][0])
        how = f"--{top.replace('_', '-')} / {prefix}{top.upper()}"
        lines.append(f"  {field} ({how}): {message} (got {e.get('input')!r})")
    return "\n".join(lines)


def load(cls: type[S], argv: list[str] | None = None) -> S:
    """Parse flags (and env) into ``cls``; exit with a readable message if invalid."""
    try:
        return CliApp.run(cls, cli_args=sys.argv[1:] if argv is None else argv)
    except ValidationError as err:
        name = cls.model_config.get("cli_prog_name") or cls.__name__
        raise ConfigError(f"{name}: invalid configuration, refusing to start:\n{describe_errors(cls, err)}")


def setup_logging(level: str = "INFO", name: str = "", fmt: str = "text") -> None:
    from fedgrpo.observability import setup_logging as setup

    setup(level, name, fmt)  # type: ignore[arg-type]
