"""`fedgrpo chaos`: a real run while services are killed and restarted.

A benchmark, not a test: it prints figures. It starts a whole federation as
processes on loopback, speaking mutual TLS with a fresh development CA (a
trainer, an orchestrator, dialed reward clients and reward clients that join
its federation port), creates one run through the client library
(:class:`fedgrpo.client.Client`, whose watch resumes across orchestrator
restarts) and, as the watched steps arrive, kills services with SIGKILL (or
stops them with SIGTERM) on a schedule and starts them again. Then it checks
the run against both ledgers:

* steps lost: steps of 1..N the orchestrator never recorded, plus steps that
  sent a batch to the trainer but are missing from the lineage of the final
  weights (the steps they contain, as the trainer reports them);
* steps duplicated: steps recorded more than once, plus steps that appear
  more than once in that lineage (applied twice);
* rewards dropped, and for every fault the time until the next step
  completed (time to recover).

The last line reads ``faults: <n> steps: <n> lost: <n> duplicated: <n>``.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ChaosSettings(BaseSettings):
    """Chaos run settings."""

    model_config = SettingsConfigDict(
        env_prefix="FEDGRPO_CHAOS_", cli_prog_name="fedgrpo chaos", cli_kebab_case=True,
        cli_implicit_flags=True, extra="forbid",
    )

    model: str = Field("tiny-policy", description="Policy (tiny-policy keeps a run short; any known model works).")
    backend: Literal["vllm", "transformers"] = Field("vllm", description="Rollout engine of the orchestrator.")
    steps: int = Field(24, ge=6, description="Steps of the run.")
    fault_every: int = Field(3, ge=1, description="Steps between faults.")
    schedule: list[str] = Field(
        default_factory=lambda: [
            "kill joined-0", "kill client-0", "kill trainer", "kill orchestrator", "kill joined-1",
            "stop trainer",
        ],
        description="Faults in order, one every fault_every steps: '<kill|stop> <service>' "
        "(kill: SIGKILL, stop: SIGTERM; the service is started again at once).",
    )
    checkpoint_every: int = Field(4, ge=1, description="Trainer checkpoint interval (steps after it are replayed).")
    cache_dir: Path = Field(Path(".cache/models"), description="Prepared base models.")
    out_dir: Path = Field(Path("runs/chaos"), description="Logs, certificates and state of the chaos run.")
    start_timeout: float = Field(600.0, description="Seconds a service may take to start.")


@dataclass
class Fault:
    action: str
    service: str
    at_step: int
    started: float = 0.0
    recovered_after: float | None = None


def _lineage(address: str, identity, run_id: str) -> list[int]:
    from fedgrpo import serving
    from fedgrpo.v1 import policy_trainer_pb2 as tpb
    from fedgrpo.v1 import policy_trainer_pb2_grpc as tpb_grpc

    with serving.channel(address, identity) as ch:
        stub = tpb_grpc.PolicyTrainerServiceStub(ch)
        return list(stub.GetLineage(tpb.GetPolicyVersionRequest(run_id=run_id), timeout=30).applied_steps)


def main(argv: list[str] | None = None) -> None:
    from fedgrpo.certs import init_federation
    from fedgrpo.client import Client
    from fedgrpo.settings import load, setup_logging
    from fedgrpo.v1 import orchestrator_pb2 as pb

    from .job.launcher import Federation

    s = load(ChaosSettings, argv)
    setup_logging("WARNING")
    out = s.out_dir / time.strftime("%Y%m%d-%H%M%S")
    certs = out / "certs"
    joined_names = ["joined-0", "joined-1"]
    init_federation(certs, clients=["client-0", "client-1", *joined_names])
    token = (certs / "api-token").read_text().strip()
    common = ["--model", s.model, "--cache-dir", str(s.cache_dir)]
    faults = [
        Fault(*item.split(maxsplit=1), at_step=(i + 1) * s.fault_every)  # type: ignore[call-arg]
        for i, item in enumerate(s.schedule)
        if (i + 1) * s.fault_every < s.steps
    ]
    print(f"chaos: {s.steps} steps, {len(faults)} faults, model {s.model}; logs in {out / 'logs'}", flush=True)
    with Federation(out / "logs", certs=certs) as fed:
        services = {
            "trainer": fed.start("trainer", "trainer", [
                *common, "--state-dir", str(out / "trainer"), "--checkpoint-every", str(s.checkpoint_every),
                "--torch-threads", "1",
            ]),
        }
        for i, domains in enumerate(["add1,sub1", "sub1,add1"]):
            services[f"client-{i}"] = fed.start(
                f"client-{i}", "reward-client", ["--name", f"client-{i}", "--domains", domains]
            )
        for service in services.values():
            fed.wait_healthy(service, s.start_timeout)
        services["orchestrator"] = fed.start("orchestrator", "orchestrator", [
            *common, "--runs-dir", str(out / "runs"), "--trainer", services["trainer"].address,
            "--backend", s.backend, "--max-model-len", "512", "--api-tokens-file", str(certs / "api-token"),
            "--reward-clients", f"{services['client-0'].address},{services['client-1'].address}",
            "--heartbeat-seconds", "1", "--heartbeat-misses", "3", "--auxiliary-size", "20",
            "--client-wait-seconds", "60",
        ])
        fed.wait_healthy(services["orchestrator"], s.start_timeout)
        for i, name in enumerate(joined_names):
            services[name] = fed.start(name, "reward-client", [
                "--name", name, "--domains", ["add1", "sub1"][i],
                "--orchestrator", services["orchestrator"].federation_address,
            ])
            fed.wait_healthy(services[name], s.start_timeout)
        # Through the client library, as any user: the create is retried with one request_id, and the
        # watch resumes after the last step it received when the orchestrator is killed under it.
        client = Client(services["orchestrator"].address, identity=fed.identity(), token=token, timeout=60)
        run = client.create_run(pb.RunSpec(
            tasks=["add1", "sub1"], steps=s.steps, questions_per_step=4, candidates_per_question=8,
            experts_per_question=2, max_tokens=8, temperature=1.5, expert_quorum=1, reward_timeout_seconds=20,
        ))
        started = time.monotonic()
        pending = list(faults)
        done_faults: list[Fault] = []

        def on_step(m: pb.StepMetrics) -> None:
            for fault in done_faults:
                if fault.recovered_after is None and m.step > fault.at_step:
                    fault.recovered_after = time.monotonic() - fault.started
            if pending and m.step >= pending[0].at_step and all(f.recovered_after is not None for f in done_faults):
                if client.get_run(run.run_id).steps_completed > m.step:
                    return  # a resumed watch catching up on steps: fault the run where it is, a step later
                fault = pending.pop(0)
                fault.started, fault.at_step = time.monotonic(), m.step
                fed.restart(services[fault.service], kill=fault.action == "kill")
                print(f"step {m.step:3d}: {fault.action} {fault.service}", flush=True)
                done_faults.append(fault)

        final, _ = client.wait(run.run_id, on_step=on_step)
        elapsed = time.monotonic() - started
        metrics = [json.loads(line) for line in (Path(final.artifacts_path) / "metrics.jsonl").read_text().splitlines()]
        with sqlite3.connect(out / "runs" / "orchestrator.sqlite3") as db:
            trained = [r[0] for r in db.execute(
                "SELECT step FROM steps WHERE run_id = ? AND batch IS NOT NULL AND completed = 1 ORDER BY step",
                (run.run_id,),
            )]
        lineage = _lineage(services["trainer"].address, fed.identity(), run.run_id)
        client.close()

    recorded = Counter(m["step"] for m in metrics)
    applied = Counter(lineage)
    lost = sorted(set(range(1, s.steps + 1)) - set(recorded)) + sorted(set(trained) - set(applied))
    duplicated = sorted(k for k, n in recorded.items() if n > 1) + sorted(k for k, n in applied.items() if n > 1)
    dropped = sum(m["rewards_dropped"] for m in metrics)
    received = sum(m["rewards_received"] for m in metrics)
    print()
    print(f"run {final.run_id}: {pb.RunState.Name(final.state)} in {elapsed:.0f}s {final.error}")
    print(f"{'fault':28s} {'at step':>8s} {'recovered after':>16s}")
    for fault in done_faults:
        after = f"{fault.recovered_after:.1f}s" if fault.recovered_after is not None else "never"
        print(f"{fault.action + ' ' + fault.service:28s} {fault.at_step:8d} {after:>16s}")
    print(f"steps completed {len(recorded)}/{s.steps}; trained {len(trained)}, "
          f"in the final weights' lineage {len(lineage)}")
    print(f"steps replayed to the trainer {sum(m.get('steps_replayed', 0) for m in metrics)}; "
          f"experts replaced {sum(m.get('experts_replaced', 0) for m in metrics)}; "
          f"scoring retries {sum(m.get('score_retries', 0) for m in metrics)}")
    print(f"rewards received {received}, dropped {dropped}; questions below quorum "
          f"{sum(m.get('questions_below_quorum', 0) for m in metrics)}")
    if lost:
        print(f"lost steps: {lost}")
    if duplicated:
        print(f"duplicated steps: {duplicated}")
    print(f"faults: {len(done_faults)} steps: {len(recorded)} lost: {len(lost)} duplicated: {len(duplicated)}")
    if final.state != pb.RUN_STATE_SUCCEEDED or lost or duplicated:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
