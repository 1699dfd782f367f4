"""The `fedgrpo` command.

    fedgrpo run            the main job: a whole federation on this machine
    fedgrpo experiment     FedGRPO vs its baselines over seeds: report.md, report.json, plots
    fedgrpo evaluate       accuracy of a policy folder on a labelled file, with a chosen checker
    fedgrpo orchestrator   the orchestrator service (public API, rollouts)
    fedgrpo trainer        the policy trainer service
    fedgrpo reward-client  one reward client (a domain organisation)
    fedgrpo reward-model   a client's own reward model: `preferences` from its labels, `train` (TRL, Bradley-Terry)
    fedgrpo bench          generation and step-time benchmark
    fedgrpo chaos          a real run while services are killed and restarted; counts lost/duplicated steps
    fedgrpo tasks          list the task domains
    fedgrpo datasets       write a built-in domain as a data file (`datasets make`); check a file (`datasets check`)
    fedgrpo prepare-model  convert/cache a base model (smollm2-135m-instruct, tiny-policy, tiny-llama)
    fedgrpo health ADDR    exit 0 if the service at host:port reports SERVING (container health checks)
    fedgrpo certs          a development CA and identities for mutual TLS (`certs init`, `certs issue NAME`)
    fedgrpo runs           drive an orchestrator: `runs create|list|get|watch|cancel` (the client library)
    fedgrpo clients        an orchestrator's reward clients (`clients list`)
    fedgrpo graph          an orchestrator's confidence graph (`graph show|export`)

`fedgrpo <command> --help` documents every option; each option can also be
set by environment variable (shown in the service's config docs).
"""

from __future__ import annotations

import sys

COMMANDS = {
    "run": ("fedgrpo.job.main_job", "the main job: a whole federation on this machine"),
    "experiment": ("fedgrpo.job.experiment", "FedGRPO against its baselines, with a report"),
    "evaluate": ("fedgrpo.job.accuracy", "accuracy of a policy on a labelled file"),
    "orchestrator": ("fedgrpo.services.orchestrator.server", "the orchestrator service"),
    "trainer": ("fedgrpo.services.policy_trainer.server", "the policy trainer service"),
    "reward-client": ("fedgrpo.services.reward_client.server", "one reward client"),
    "reward-model": ("fedgrpo.reward_models.cli", "a client's own reward model: preferences, train"),
    "bench": ("fedgrpo.bench", "generation and training-step benchmark"),
    "chaos": ("fedgrpo.chaos", "a real run while services are killed and restarted"),
    "tasks": ("fedgrpo.cli", "list the task domains"),
    "datasets": ("fedgrpo.cli", "write a built-in domain as a data file; check a data file"),
    "prepare-model": ("fedgrpo.cli", "convert and cache a base model"),
    "health": ("fedgrpo.cli", "check a service's gRPC health"),
    "certs": ("fedgrpo.cli", "a development CA and identities for mutual TLS"),
    "runs": ("fedgrpo.client_cli", "create, list, get, watch and cancel runs"),
    "clients": ("fedgrpo.client_cli", "an orchestrator's reward clients"),
    "graph": ("fedgrpo.client_cli", "an orchestrator's confidence graph"),
}


def _health(argv: list[str]) -> None:
    import argparse

    from fedgrpo import serving

    parser = argparse.ArgumentParser(prog="fedgrpo health", description="Exit 0 if host:port reports SERVING.")
    parser.add_argument("address", help="host:port of a fedgrpo service")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds to wait (default 3)")
    parser.add_argument("--tls-cert", help="with --tls-key and --tls-ca: check over mutual TLS with this identity")
    parser.add_argument("--tls-key")
    parser.add_argument("--tls-ca")
    args = parser.parse_args(argv)
    identity = None
    if args.tls_cert or args.tls_key or args.tls_ca:
        from fedgrpo.security import Identity

        if not (args.tls_cert and args.tls_key and args.tls_ca):
            raise SystemExit("fedgrpo health: give all of --tls-cert, --tls-key and --tls-ca, or none (plaintext)")
        try:
            identity = Identity.load(args.tls_cert, args.tls_key, args.tls_ca)
        except OSError as err:
            raise SystemExit(f"fedgrpo health: {err}") from None
    try:
        serving.wait_healthy(args.address, args.timeout, identity=identity)
    except TimeoutError as err:
        raise SystemExit(f"unhealthy: {err}") from None
    print(f"{args.address} SERVING")


def _certs(argv: list[str]) -> None:
    import argparse
    from pathlib import Path

    from fedgrpo import certs

    def names(text: str) -> list[str]:
        return [part.strip() for part in text.split(",") if part.strip()]

    def owner_ids(text: str) -> tuple[int, int]:
        uid, _, gid = text.partition(":")
        if not (uid.isdigit() and gid.isdigit()):
            raise argparse.ArgumentTypeError(f"{text!r}: expected numeric UID:GID, e.g. 10001:10001")
        return int(uid), int(gid)

    parser = argparse.ArgumentParser(prog="fedgrpo certs", description="A development CA for mutual TLS.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{init,issue}")
    init = commands.add_parser("init", help="a CA plus one identity per service and client, and an api-token")
    init.add_argument("--clients", type=names, default=[], help="comma-separated reward-client names")
    init.add_argument("--overwrite", action="store_true", help="reissue existing identities (the CA is kept)")
    init.add_argument(
        "--export", type=Path, default=None, metavar="DIR",
        help="also copy each identity into DIR/NAME/ (its .crt and .key plus ca.crt; the orchestrator's also the "
        "api-token; never ca.key), so each service or client mounts only its own",
    )
    init.add_argument(
        "--owner", type=owner_ids, default=None, metavar="UID:GID",
        help="with --export: the user the exported files belong to (the containers' user; needs root)",
    )
    one = commands.add_parser("issue", help="one more identity signed by the existing CA")
    one.add_argument("name", help="identity name: 1-64 letters, digits, '-', '_' or '.'")
    one.add_argument("--out", type=Path, default=None, help="write NAME.crt, NAME.key and ca.crt here instead")
    one.add_argument(
        "--role", choices=certs.ROLES, default=None,
        help="what NAME acts as, checked by every service it calls (default: orchestrator and trainer their own, "
        "any other name reward_client)",
    )
    for sub in (init, one):
        sub.add_argument("--dir", type=Path, default=Path(".cache/certs"), help="CA folder (default .cache/certs)")
        sub.add_argument("--hosts", type=names, default=[], help="extra comma-separated DNS names or IPs for SANs")
    args = parser.parse_args(argv)
    if args.command == "init" and args.owner is not None and args.export is None:
        raise SystemExit("fedgrpo certs init: --owner applies to --export: give both")
    try:
        if args.command == "init":
            identities = certs.init_federation(
                args.dir, clients=args.clients, hosts=args.hosts, overwrite=args.overwrite
            )
            if args.export is not None:
                identities = {
                    name: certs.export(
                        args.dir, name, args.export / name, with_api_token=name == "orchestrator", owner=args.owner
                    )
                    for name in identities
                }
        else:
            identities = {args.name: certs.issue(args.dir, args.name, args.hosts, out_dir=args.out, role=args.role)}
    except (OSError, ValueError) as err:
        raise SystemExit(f"fedgrpo certs {args.command}: {err}") from None
    for name, identity in identities.items():
        print(f"{name:14s} {identity.cert}  {identity.key}")
    print(f"{'ca':14s} {next(iter(identities.values())).ca}")
    if args.command == "init":
        print(f"{'api-token':14s} {args.dir / certs.API_TOKEN}")
    if getattr(args, "export", None) is not None:
        print(f"Each identity's folder under {args.export} holds only its own key (the orchestrator's also the token).")
        return
    print(f"Give each service or client its own .crt and .key plus {certs.CA_CERT}; "
          f"{certs.CA_KEY} stays here (it can sign any identity).")


def _datasets(argv: list[str]) -> None:
    import argparse
    from collections import Counter
    from pathlib import Path

    from fedgrpo.data.files import Columns, DataFileError, deduplicate, read_rows
    from fedgrpo.data.make import make_file, write_rows

    parser = argparse.ArgumentParser(prog="fedgrpo datasets", description="Question and label files.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{make,check}")
    make = commands.add_parser(
        "make", help="write built-in domains' labelled questions (question, answer, domain, metadata) to a file"
    )
    make.add_argument("domains", help="built-in domains, comma-separated (`fedgrpo tasks` lists them)")
    make.add_argument("--size", type=int, required=True, help="how many questions of each domain")
    make.add_argument("--out", type=Path, required=True, help="the file: .jsonl, .csv or .parquet")
    make.add_argument("--seed", type=int, default=0, help="which draw of the domains (default 0)")
    make.add_argument(
        "--unlabelled", action="store_true", help="write question and domain only (the server's copy: no answers)"
    )
    make.add_argument(
        "--exclude", type=Path, action="append", default=[], metavar="FILE",
        help="leave out every question of FILE (repeatable), and repeats: a held-out set",
    )
    make.add_argument(
        "--questions-out", type=Path, default=None,
        help="also write the same questions without answers (question, domain): the server's copy",
    )
    check = commands.add_parser("check", help="read a file as a client or the server would, and summarise it")
    check.add_argument("path", type=Path, help="a .jsonl, .csv or .parquet file or a `datasets` folder")
    check.add_argument("--labelled", action="store_true", help="every row must have an answer")
    check.add_argument("--question-column", default=Columns.question)
    check.add_argument("--answer-column", default=Columns.answer)
    check.add_argument("--domain-column", default=Columns.domain)
    args = parser.parse_args(argv)
    try:
        if args.command == "make":
            domains = [d.strip() for d in args.domains.split(",") if d.strip()]
            count = make_file(domains, args.size, args.out, args.seed, not args.unlabelled, args.exclude)
            kind = "unlabelled" if args.unlabelled else "labelled"
            held_out = f", none of the questions of {', '.join(map(str, args.exclude))}" if args.exclude else ""
            print(f"{args.out}: {count} {kind} {','.join(domains)} questions (seed {args.seed}{held_out})")
            if args.questions_out is not None:
                rows = [{"question": r.question, "domain": r.domain or ""} for r in read_rows(args.out)]
                print(f"{write_rows(rows, args.questions_out, labelled=False)}: the same questions, no answers")
            return
        columns = Columns(question=args.question_column, answer=args.answer_column, domain=args.domain_column)
        rows = read_rows(args.path, columns, labelled=args.labelled)
    except (DataFileError, KeyError, ValueError, OSError) as err:
        raise SystemExit(f"fedgrpo datasets {args.command}: {str(err).strip(chr(34))}") from None
    distinct, dropped = deduplicate(rows)
    labelled = sum(row.answer is not None for row in rows)
    domains = Counter(row.domain or "(none)" for row in distinct)
    print(f"{args.path}: {len(rows)} rows, {len(distinct)} distinct questions ({dropped} repeated), "
          f"{labelled} with an answer")
    for domain, count in sorted(domains.items()):
        print(f"  {domain:18s} {count}")


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
    if command == "certs":
        return _certs(rest)
    if command == "datasets":
        return _datasets(rest)
    if command in ("runs", "clients", "graph"):
        from fedgrpo.client_cli import main as client_main

        return client_main(rest, command)
    import importlib

    importlib.import_module(COMMANDS[command][0]).main(rest)


if __name__ == "__main__":
    main()
