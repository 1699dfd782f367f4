"""The `fedgrpo` command.

    fedgrpo run            the main job: a whole federation on this machine
    fedgrpo experiment     FedGRPO vs its baselines over seeds: report.md, report.json, plots
    fedgrpo orchestrator   the orchestrator service (public API, rollouts)
    fedgrpo trainer        the policy trainer service
    fedgrpo reward-client  one reward client (a domain organisation)
    fedgrpo bench          generation and step-time benchmark
    fedgrpo tasks          list the task domains
    fedgrpo prepare-model  convert/cache a base model (smollm2-135m-instruct, tiny-policy, tiny-llama)
    fedgrpo health ADDR    exit 0 if the service at host:port reports SERVING (container health checks)

`fedgrpo <command> --help` documents every option; each option can also be
set by environment variable (shown in the service's config docs).
"""

from __future__ import annotations

import sys

COMMANDS = {
    "run": ("fedgrpo.job.main_job", "the main job: a whole federation on this machine"),
    "experiment": ("fedgrpo.job.experiment", "FedGRPO against its baselines, with a report"),
    "orchestrator": ("services.orchestrator.server", "the orchestrator service"),
    "trainer": ("services.policy_trainer.server", "the policy trainer service"),
    "reward-client": ("services.reward_client.server", "one reward client"),
    "bench": ("fedgrpo.bench", "generation and training-step benchmark"),
    "tasks": ("fedgrpo.cli", "list the task domains"),
    "prepare-model": ("fedgrpo.cli", "convert and cache a base model"),
    "health": ("fedgrpo.cli", "check a service's gRPC health"),
}


def _health(argv: list[str]) -> None:
    import argparse

    from fedgrpo import serving

    parser = argparse.ArgumentParser(prog="fedgrpo health", description="Exit 0 if host:port reports SERVING.")
    parser.add_argument("address", help="host:port of a fedgrpo service")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds to wait (default 3)")
    args = parser.parse_args(argv)
    try:
        serving.wait_healthy(args.address, args.timeout)
    except TimeoutError as err:
        raise SystemExit(f"unhealthy: {err}") from None
    print(f"{args.address} SERVING")


def _tasks(argv: list[str]) -> None:
    from fedgrpo.tasks import DOMAINS

    for name, domain in DOMAINS.items():
        print(f"{name:18s} {domain.description}")


def _prepare_model(argv: list[str]) -> None:
    import argparse
    import logging
    from pathlib import Path

    from fedgrpo.models import KNOWN_MODELS, resolve_model

    parser = argparse.ArgumentParser(prog="fedgrpo prepare-model", description="Convert and cache a base model.")
    parser.add_argument("model", help="one of: " + ", ".join(KNOWN_MODELS) + ", or a Hugging Face folder")
    parser.add_argument("--cache-dir", type=Path, default=Path(".cache/models"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    print(resolve_model(args.model, args.cache_dir))


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        raise SystemExit(0 if argv else 2)
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        raise SystemExit(f"fedgrpo: unknown command {command!r}; commands: {', '.join(COMMANDS)}")
    if command == "tasks":
        return _tasks(rest)
    if command == "prepare-model":
        return _prepare_model(rest)
    if command == "health":
        return _health(rest)
    import importlib

    importlib.import_module(COMMANDS[command][0]).main(rest)


if __name__ == "__main__":
    main()
