"""Following a run from the client side: one live progress bar, and TensorBoard events.

Contract
--------
``follow_run(client, run, console)`` watches ``run`` to its end through the
client library (:meth:`fedgrpo.client.Client.wait`: a broken stream is
resumed after the last step received) with a progress bar showing the step,
the step's mean reward and the share of candidates judged correct so far
(:func:`running_accuracy`), or for a parameter-exchange run its round's
clients, rewards and bytes (:func:`step_figures`); it returns the final run and every step's
metrics as dicts. With ``logdir`` it also writes each step's
:func:`step_scalars` as TensorBoard scalars there (:class:`TensorBoardReport`),
so a user without access to the orchestrator's disk gets TensorBoard from the
watched metrics alone. `fedgrpo run`, `fedgrpo experiment` and `fedgrpo runs
watch` all follow runs with it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from fedgrpo.client import Client
from fedgrpo.v1 import orchestrator_pb2 as pb

__all__ = ["TensorBoardReport", "follow_run", "running_accuracy", "step_figures", "step_scalars", "REPORT_TO"]

# Where step metrics may go besides the bar, as TRL's `report_to` names them.
REPORT_TO = ("none", "tensorboard")
# The tag prefix of TRL's (transformers') TensorBoard callback: train/reward_mean sits where train/loss does.
TAG_PREFIX = "train/"
_NUMBERS = {FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_INT32,
            FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_UINT64}


def step_scalars(m: pb.StepMetrics) -> dict[str, float]:
    """Every numeric field of a step's metrics but ``step`` (the x axis), by field name; a map of numbers
    (``rewards_by_client``, ``confidence_by_client``, ...) gives one entry per key, ``<field>/<key>``."""
    scalars: dict[str, float] = {}
    for field in m.DESCRIPTOR.fields:
        value = getattr(m, field.name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            if field.message_type.fields_by_name["value"].type in _NUMBERS:
                scalars.update({f"{field.name}/{key}": float(v) for key, v in sorted(value.items())})
        elif field.type in _NUMBERS and field.name != "step" and not _repeated(field):
            scalars[field.name] = float(value)
    return scalars


def _repeated(field: FieldDescriptor) -> bool:
    # FieldDescriptor.label is deprecated in newer protobuf releases; is_repeated replaces it.
    return field.is_repeated if hasattr(field, "is_repeated") else field.label == FieldDescriptor.LABEL_REPEATED


def step_figures(m: pb.StepMetrics, steps: list[Mapping]) -> str:
    """The progress bar's figures after step ``m``: a FedGRPO step's mean reward and the share correct so far;
    a parameter-exchange round's (FedMOA, FedAvg-LoRA) participants, the clients' mean local reward, the mean
    validation accuracy where it was measured, and the adapter bytes each way."""
    if not m.HasField("round"):
        return (f"reward {m.reward_mean:.2f} | correct so far {running_accuracy(steps):.2f} | "
                f"{m.step_seconds:.0f}s/step")
    r = m.round
    local = list(r.local_reward_by_client.values())
    figures = [f"{len(r.participants)} clients"
               + (f", {len(r.missing)} missing" if r.missing else "")
               + (f", {len(r.rejected_by_client)} refused" if r.rejected_by_client else "")]
    if local:
        figures.append(f"local reward {sum(local) / len(local):.2f}")
    if r.validation_accuracy_by_client:
        accuracy = list(r.validation_accuracy_by_client.values())
        figures.append(f"validation {sum(accuracy) / len(accuracy):.2f}")
    moved = sum(r.adapter_bytes_down_by_client.values()) + sum(r.adapter_bytes_up_by_client.values())
    figures += [f"{moved / 1e6:.1f} MB moved", f"{m.step_seconds:.0f}s/round"]
    return " | ".join(figures)


def running_accuracy(steps: Iterable[Mapping]) -> float:
    """The share of scored candidates judged correct over ``steps`` (metrics as dicts): each step's
    accuracy weighted by the rewards it received, so a step that heard few rewards counts little."""
    steps = list(steps)
    received = sum(s["rewards_received"] for s in steps)
    return sum(s["accuracy"] * s["rewards_received"] for s in steps) / max(1, received)


class TensorBoardReport:
    """Writes steps' metrics as TensorBoard scalars (``train/<field>`` at the step) into ``logdir``.

    The writer is torch's ``SummaryWriter`` (it needs the ``tensorboard`` package), the one TRL reports
    with; view the events with ``tensorboard --logdir <logdir's parent>``."""

    def __init__(self, logdir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter  # torch loads in seconds: only when asked for

        self.logdir = Path(logdir)
        self.writer = SummaryWriter(log_dir=str(self.logdir))

    def add(self, m: pb.StepMetrics) -> None:
        for name, value in step_scalars(m).items():
            self.writer.add_scalar(TAG_PREFIX + name, value, global_step=m.step)
        self.writer.flush()  # a watcher stopped with ^C keeps every step it saw

    def close(self) -> None:
        self.writer.close()

    def __enter__(self) -> TensorBoardReport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def follow_run(
    client: Client, run: pb.Run, console: Console, label: str | None = None, after_step: int = 0,
    logdir: Path | None = None,
) -> tuple[pb.Run, list[dict]]:
    """Watch a run to its end (steps after ``after_step``) with a live progress bar labelled ``label`` (default:
    the run id); with ``logdir``, TensorBoard events too. Returns the final run and every step's metrics."""
    steps: list[dict] = []
    report = TensorBoardReport(logdir) if logdir is not None else None
    columns = [
        TextColumn(f"[bold]{label or run.run_id}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[figures]}"), TimeElapsedColumn(), TimeRemainingColumn(),
    ]
    try:
        with Progress(*columns, console=console) as progress:
            state = pb.RunState.Name(run.state).removeprefix("RUN_STATE_").lower()
            task = progress.add_task("run", total=run.spec.steps, completed=after_step, figures=state)

            def on_step(m: pb.StepMetrics) -> None:
                steps.append(json_format.MessageToDict(
                    m, preserving_proto_field_name=True, always_print_fields_with_no_presence=True))
                if report is not None:
                    report.add(m)
                progress.update(task, completed=m.step, figures=step_figures(m, steps))

            run, _ = client.wait(run.run_id, on_step=on_step, after_step=after_step)
    finally:
        if report is not None:
            report.close()
    return run, steps
