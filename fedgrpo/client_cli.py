"""`fedgrpo runs`, `fedgrpo clients`, `fedgrpo graph`: the client library (:mod:`fedgrpo.client`) on the command line.

    fedgrpo runs create --spec SPEC [--request-id ID] [--watch]
    fedgrpo runs list | get RUN | watch RUN [--after-step N] | cancel RUN
    fedgrpo runs download RUN --out DIR [--path model/ ...]
    (watching: [--report-to tensorboard [--logdir DIR]])
    fedgrpo clients list
    fedgrpo graph show [--run RUN] | export [--run RUN] --out FILE.json

Connection options (every command): ``--address``, ``--ca``, ``--token`` or
``--token-file``, ``--cert``/``--key`` for mutual TLS; or the ``FEDGRPO_*``
environment variables / ``~/.config/fedgrpo/client.toml`` of
:class:`fedgrpo.client.ClientSettings`. ``--json`` prints the API's messages
as JSON (one object, or one per line for a watch) instead of tables. A
refused call prints its status, the field at fault and the server's message,
and exits 1 (2 for a bad command line), as does a download whose file does not
match its checksum (DATA_LOSS) or that cannot be written to ``--out``. A watch
shows :func:`fedgrpo.progress.follow_run`'s bar; ``--report-to tensorboard``
also writes the steps as TensorBoard events to ``--logdir`` (default
``runs/<run id>/tensorboard`` here, on the watching machine).
"""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from pathlib import Path

from google.protobuf import json_format
from google.protobuf.message import Message
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from fedgrpo import spec_enums
from fedgrpo.client import Client, ClientSettings, FedgrpoError
from fedgrpo.progress import REPORT_TO, TensorBoardReport, follow_run
from fedgrpo.v1 import orchestrator_pb2 as pb

__all__ = ["main"]


def _connection(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("connection (default: FEDGRPO_* variables, ~/.config/fedgrpo/client.toml)")
    group.add_argument("--address", help="the orchestrator's API, host:port (FEDGRPO_ADDRESS; default 127.0.0.1:50051)")
    group.add_argument("--ca", type=Path, help="CA certificate (PEM) that signed the orchestrator's: TLS (FEDGRPO_CA)")
    group.add_argument("--token", help="API token (FEDGRPO_TOKEN)")
    group.add_argument("--token-file", type=Path, help="file holding the API token (FEDGRPO_TOKEN_FILE)")
    group.add_argument("--cert", type=Path, help="client certificate for mutual TLS (FEDGRPO_CERT)")
    group.add_argument("--key", type=Path, help="its key (FEDGRPO_KEY)")
    group.add_argument("--json", action="store_true", help="print the API's messages as JSON")


def _reporting(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--report-to", choices=REPORT_TO, default="none",
                        help="also write each step's metrics there (tensorboard: event files, one scalar per metric)")
    parser.add_argument("--logdir", type=Path, help="TensorBoard events folder (default runs/<run id>/tensorboard)")


def _client(args: argparse.Namespace) -> Client:
    given = {k: getattr(args, k) for k in ("address", "ca", "token", "token_file", "cert", "key")
             if getattr(args, k) is not None}
    try:
        return Client.from_settings(ClientSettings(**given))
    except (ValueError, OSError) as err:
        raise SystemExit(f"fedgrpo: connection: {err}") from None


def _as_dict(message: Message) -> dict:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def _print_json(message: Message) -> None:
    print(json.dumps(_as_dict(message), indent=1))


def _spec(text: str) -> pb.RunSpec:
    """A RunSpec from a JSON or TOML file, or inline JSON; a bad one exits naming what is wrong."""
    path = Path(text)
    try:
        if text.lstrip().startswith("{"):
            data = json.loads(text)
        elif path.suffix.lower() == ".toml":
            data = tomllib.loads(path.read_text())
            data = data.get("run", data)  # a federation file's [run] table works too
        else:
            data = json.loads(path.read_text())
        return spec_enums.spec_message(data)
    except (OSError, ValueError, tomllib.TOMLDecodeError, json_format.ParseError) as err:
        raise SystemExit(f"fedgrpo runs create: --spec {text}: {err}") from None


def _state(run: pb.Run) -> str:
    name = pb.RunState.Name(run.state).removeprefix("RUN_STATE_").lower()
    return f"{name} (cancel requested)" if run.cancel_requested and run.state == pb.RUN_STATE_RUNNING else name


def _runs_table(runs: list[pb.Run]) -> Table:
    table = Table("run", "state", "steps", "tasks", "created", "error")
    for r in runs:
        table.add_row(r.run_id, _state(r), f"{r.steps_completed}/{r.spec.steps}", ",".join(r.spec.tasks),
                      r.create_time.ToDatetime().strftime("%Y-%m-%d %H:%M:%S"), r.error[:60])
    return table


def _watch(client: Client, run: pb.Run, after_step: int, args: argparse.Namespace, console: Console) -> pb.Run:
    logdir = None
    if args.report_to == "tensorboard":
        logdir = args.logdir or Path("runs") / run.run_id / "tensorboard"
        console.print(f"TensorBoard events in {logdir}: tensorboard --logdir {logdir.parent}")
    if not args.json:
        return follow_run(client, run, console, after_step=after_step, logdir=logdir)[0]
    final = run
    report = TensorBoardReport(logdir) if logdir is not None else None
    try:
        for event in client.watch(run.run_id, after_step):
            print(json.dumps(_as_dict(event)), flush=True)
            if event.HasField("step") and report is not None:
                report.add(event.step)
            final = event.run if event.HasField("run") else final
    finally:
        if report is not None:
            report.close()
    return final


def _download(client: Client, args: argparse.Namespace, console: Console) -> int:
    columns = [TextColumn(f"[bold]{args.run_id}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
               TextColumn("{task.fields[file]}")]
    # On a terminal only, and cleared at the end: the summary line below stays.
    with Progress(*columns, console=console, transient=True, disable=not console.is_terminal) as progress:
        task = progress.add_task("download", total=None, file="")

        def advance(chunk: pb.ArtifactChunk) -> None:
            if chunk.total_files:  # the stream's first chunk: what is coming
                progress.update(task, total=chunk.total_bytes)
            progress.update(task, advance=len(chunk.data), file=chunk.path)

        try:
            written = client.download(args.run_id, args.out, args.paths, on_chunk=advance)
        except OSError as err:
            raise SystemExit(f"fedgrpo runs download: --out {args.out}: {err}") from None
    if args.json:
        print(json.dumps([str(p) for p in written], indent=1))
    else:
        size = sum(p.stat().st_size for p in written)
        console.print(f"run {args.run_id}: {len(written)} files, {size:,} bytes, in {args.out} "
                      "(each checked against its SHA-256)", markup=False, soft_wrap=True)
    return 0


def _runs(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="fedgrpo runs",
                                     description="Create, list, follow, cancel and download runs.")
    sub = parser.add_subparsers(dest="action", required=True)
    create = sub.add_parser("create", help="create a run (retry-safe)")
    create.add_argument("--spec", required=True, help="RunSpec as a JSON or TOML file (a federation file's [run] "
                        "works), or inline JSON such as '{\"tasks\": [\"add1\"], \"steps\": 5}'")
    create.add_argument("--request-id", help="the same id on a retry returns the same run (default: a new UUID)")
    create.add_argument("--watch", action="store_true", help="then follow it to its end")
    _reporting(create)
    listing = sub.add_parser("list", help="every run, oldest first")
    listing.add_argument("--state", action="append", default=[],
                         choices=["queued", "running", "succeeded", "failed", "cancelled"],
                         help="only runs in this state (repeat for several)")
    for name, text in (("get", "one run"), ("cancel", "stop a queued run now, a running one after its step"),
                       ("watch", "follow a run to its end")):
        one = sub.add_parser(name, help=text)
        one.add_argument("run_id")
        if name == "watch":
            one.add_argument("--after-step", type=int, default=0, help="leave out the steps up to this one")
            _reporting(one)
    download = sub.add_parser("download", help="fetch a run's files (model/, metrics.jsonl, ...) into a folder")
    download.add_argument("run_id")
    download.add_argument("--out", type=Path, required=True,
                          help="folder to write them into (made if missing; a file there of the same name is replaced)")
    download.add_argument("--path", action="append", default=[], dest="paths", metavar="PATH",
                          help="only this file or folder of the run's, such as model/ or metrics.jsonl (repeat for "
                          "several; default: every file; while the run trains: run.json and metrics.jsonl)")
    for p in sub.choices.values():
        _connection(p)
    args = parser.parse_args(argv)
    console = Console(stderr=args.json)
    with _client(args) as client:
        if args.action == "create":
            run = client.create_run(_spec(args.spec), args.request_id)
            if args.json and not args.watch:
                _print_json(run)
            else:
                console.print(f"run {run.run_id} {_state(run)}; artifacts at {run.artifacts_path}")
            if args.watch:
                run = _watch(client, run, 0, args, console)
                console.print(f"run {run.run_id} {_state(run)}" + (f": {run.error}" if run.error else ""))
                return 0 if run.state == pb.RUN_STATE_SUCCEEDED else 1
        elif args.action == "list":
            runs = client.list_runs([pb.RunState.Value(f"RUN_STATE_{x.upper()}") for x in args.state])
            if args.json:
                print(json.dumps([_as_dict(r) for r in runs], indent=1))
            else:
                console.print(_runs_table(runs))
        elif args.action == "get":
            run = client.get_run(args.run_id)
            _print_json(run) if args.json else console.print(_runs_table([run]))
        elif args.action == "cancel":
            run = client.cancel_run(args.run_id)
            _print_json(run) if args.json else console.print(f"run {run.run_id} {_state(run)}")
        elif args.action == "watch":
            if args.after_step < 0:
                parser.error("--after-step: expected 0 or more")
            run = _watch(client, client.get_run(args.run_id), args.after_step, args, console)
            console.print(f"run {run.run_id} {_state(run)}" + (f": {run.error}" if run.error else ""))
            return 0 if run.state == pb.RUN_STATE_SUCCEEDED else 1
        elif args.action == "download":
            return _download(client, args, console)
    return 0


def _clients(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="fedgrpo clients", description="The orchestrator's reward clients.")
    sub = parser.add_subparsers(dest="action", required=True)
    _connection(sub.add_parser("list", help="every reward client, its domains and health"))
    args = parser.parse_args(argv)
    with _client(args) as client:
        clients = client.list_clients()
    if args.json:
        print(json.dumps([_as_dict(c) for c in clients], indent=1))
        return 0
    table = Table("client", "address", "healthy", "domains", "rewards in")
    for c in clients:
        table.add_row(c.name, c.address, "yes" if c.healthy else "no", ",".join(c.domains) or "-",
                      f"[{c.reward_min:g}, {c.reward_max:g}]")
    Console().print(table)
    return 0


def _graph(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="fedgrpo graph", description="The confidence graph (and MoR's router).")
    sub = parser.add_subparsers(dest="action", required=True)
    show = sub.add_parser("show", help="each client's probed judging accuracy (and router weight) per domain")
    export = sub.add_parser("export", help="the graph as node-link JSON, to a file")
    export.add_argument("--out", type=Path, required=True)
    for p in (show, export):
        p.add_argument("--run", default="", help="the graph as this run sees it (its confidence, its router)")
        _connection(p)
    args = parser.parse_args(argv)
    with _client(args) as client:
        view = client.confidence_graph(args.run)
    if args.action == "export":
        args.out.write_text(json.dumps(json.loads(view.graph_json), indent=1))
        print(f"{args.out}: the confidence graph as node-link JSON")
        return 0
    if args.json:
        _print_json(view)
        return 0
    router = {(w.client, w.domain): w.weight for w in view.router_weights}
    table = Table("client", "domain", "judging accuracy", *(["router weight"] if router else []))
    for c in view.competences:
        table.add_row(c.client, c.domain, f"{c.accuracy:.3f}",
                      *([f"{router.get((c.client, c.domain), 0.0):.3f}"] if router else []))
    Console().print(table)
    return 0


COMMANDS = {"runs": _runs, "clients": _clients, "graph": _graph}


def main(argv: list[str] | None = None, command: str = "runs") -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        code = COMMANDS[command](argv)
    except FedgrpoError as err:
        where = f" (field {err.field})" if err.field else ""
        print(f"fedgrpo {command}: {err.code.name}{where}: {err.message}", file=sys.stderr)
        raise SystemExit(1) from None
    raise SystemExit(code)
