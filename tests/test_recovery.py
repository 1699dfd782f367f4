"""A run survives restarts of the trainer and of the orchestrator, losing no
step and applying none twice.

Real processes, killed with SIGKILL on purpose mid-run and started again on
the same port and state. The proof is on both sides: every step is recorded
once by the orchestrator (metrics.jsonl, the SQLite store), and the trainer's
lineage (the steps its current weights contain, in order) is exactly 1..N.
"""

from __future__ import annotations

import io
import json
import re
import sqlite3
import threading
import time
from collections import Counter

import pytest
from rich.console import Console

from fedgrpo.client import Client
from fedgrpo.progress import follow_run
from fedgrpo.v1 import orchestrator_pb2 as pb
from fedgrpo.v1 import policy_trainer_pb2 as tpb

from .conftest import PROBES, federation, trainer_stub
from .test_join import run_to_end, steps_of

pytestmark = pytest.mark.integration

STEPS = 8


def spec() -> pb.RunSpec:
    # expert_selection "all": every step has a learning signal from both clients.
    return pb.RunSpec(
        tasks=["add1"], steps=STEPS, questions_per_step=2, candidates_per_question=4, experts_per_question=1,
        max_tokens=8, temperature=1.5, expert_selection=pb.EXPERT_SELECTION_DOMAIN,
    )


def wait_for_step(stub, run_id: str, step: int, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while stub.GetRun(pb.GetRunRequest(run_id=run_id)).steps_completed < step:
        assert time.monotonic() < deadline, f"run {run_id} never reached step {step}"
        time.sleep(0.05)


def lineage(address: str, run_id: str) -> list[int]:
    return list(trainer_stub(address).GetLineage(tpb.GetPolicyVersionRequest(run_id=run_id)).applied_steps)


def store_of(run: pb.Run) -> str:
    """The orchestrator's SQLite store, beside the run's artifacts."""
    return f"{run.artifacts_path}/../orchestrator.sqlite3"


def trained_steps(run: pb.Run) -> list[int]:
    """Steps that sent a batch to the trainer (a step whose groups all tied trains nothing)."""
    with sqlite3.connect(store_of(run)) as db:
        rows = db.execute(
            "SELECT step FROM steps WHERE run_id = ? AND batch IS NOT NULL ORDER BY step", (run.run_id,)
        ).fetchall()
    return [r[0] for r in rows]


def ledger(run: pb.Run) -> dict[int, dict[str, int]]:
    """Rewards kept in the orchestrator's ledger, counted per step and client (null, no reward, not counted)."""
    counts: dict[int, Counter] = {}
    with sqlite3.connect(store_of(run)) as db:
        for step, client, rewards in db.execute(
            "SELECT step, client, rewards FROM rewards WHERE run_id = ?", (run.run_id,)
        ):
            counts.setdefault(step, Counter())[client] += sum(r is not None for r in json.loads(rewards))
    return {step: dict(c) for step, c in counts.items()}


def ledger_matches_steps(run: pb.Run, steps: list[dict]) -> None:
    """Every step's rewards per client, as its metrics report them, are exactly those in the ledger."""
    reported = {s["step"]: {c: n for c, n in s["rewards_by_client"].items() if n} for s in steps}
    kept = ledger(run)
    assert {step: kept.get(step, {}) for step in reported} == reported
    assert set(kept) <= set(reported), f"ledger rows for steps never recorded: {sorted(set(kept) - set(reported))}"


def test_trainer_killed_mid_run_resumes_from_its_checkpoint_and_the_lost_steps_are_replayed(tmp_path, model_cache):
    with federation(
        tmp_path, model_cache, clients=[("add1", [])], orchestrator_args=["--no-confidence-graph"],
        trainer_args=["--checkpoint-every", "3"],
    ) as (stub, fed, services):
        run = stub.CreateRun(pb.CreateRunRequest(spec=spec()))
        wait_for_step(stub, run.run_id, 4)
        fed.restart(services["trainer"], kill=True)  # its checkpoint holds step 3 at most
        run = run_to_end(stub, run.run_id)
        assert run.state == pb.RUN_STATE_SUCCEEDED, run.error
        steps = steps_of(run)
        assert [s["step"] for s in steps] == list(range(1, STEPS + 1))
        assert lineage(services["trainer"].address, run.run_id) == trained_steps(run)
        assert sum(s["steps_replayed"] for s in steps) >= 1


def test_orchestrator_killed_mid_run_resumes_the_run(tmp_path, model_cache):
    with federation(
        tmp_path, model_cache, clients=[("add1", [])], orchestrator_args=["--no-confidence-graph"],
    ) as (stub, fed, services):
        run = stub.CreateRun(pb.CreateRunRequest(spec=spec()))
        # A watcher follows the run across the restart: its stream breaks and is resumed after its last step.
        watched: dict = {}
        watching = Client(services["orchestrator"].address)
        watcher = threading.Thread(target=lambda: watched.update(
            zip(("run", "steps"), follow_run(watching, run, Console(file=io.StringIO()), "watch"))))
        watcher.start()
        wait_for_step(stub, run.run_id, 3)
        fed.restart(services["orchestrator"], kill=True)
        fed.wait_healthy(services["orchestrator"], 240)
        # The kill landed mid-run: the restarted orchestrator found the run running, short of its last step.
        resumed = re.search(
            rf"run {run.run_id} was RUN_STATE_RUNNING when the orchestrator stopped: resuming it after step (\d+)",
            services["orchestrator"].log_path.read_text(),
        )
        assert resumed, "the restarted orchestrator did not resume the run"
        killed_after = int(resumed.group(1))
        assert 3 <= killed_after < STEPS
        run = run_to_end(stub, run.run_id)
        assert run.state == pb.RUN_STATE_SUCCEEDED, run.error
        steps = steps_of(run)
        assert [s["step"] for s in steps] == list(range(1, STEPS + 1)), "a step was lost or recorded twice"
        applied = lineage(services["trainer"].address, run.run_id)
        assert applied == trained_steps(run)
        assert len(applied) == len(set(applied))
        assert run.policy.version == len(applied)
        assert any(step > killed_after for step in applied), "no step was trained after the restart"
        ledger_matches_steps(run, steps)
        watcher.join(timeout=120)
        assert watched["run"].state == pb.RUN_STATE_SUCCEEDED  # every step seen once, none lost or doubled
        assert [s["step"] for s in watched["steps"]] == list(range(1, STEPS + 1))
        # The restarted engine serves the trainer's latest policy.
        served = stub.Generate(pb.GenerateRequest(prompts=["1+1="], max_tokens=2))
        assert served.policy.version == run.policy.version


def test_the_step_in_flight_when_the_orchestrator_dies_is_finished_from_its_logged_batch(tmp_path, model_cache):
    """Made to happen, not hoped for: with the trainer down, the orchestrator logs its next batch and waits
    retrying the trainer; it is killed there. The restarted one trains that very batch (the step is not
    sampled, generated or scored again) and the restarted trainer gets back the steps its checkpoint lacks."""
    with federation(
        tmp_path, model_cache, clients=[("add1", [])], orchestrator_args=["--no-confidence-graph"],
    ) as (stub, fed, services):
        run = stub.CreateRun(pb.CreateRunRequest(spec=spec()))
        wait_for_step(stub, run.run_id, 2)
        fed.kill(services["trainer"])
        db_path = store_of(run)
        deadline, pending = time.monotonic() + 180, None
        while pending is None:
            assert time.monotonic() < deadline, "no batch was logged while the trainer was down"
            with sqlite3.connect(db_path) as db:
                pending = db.execute(
                    "SELECT step, length(batch) FROM steps WHERE run_id = ? AND completed = 0 AND batch IS NOT NULL",
                    (run.run_id,),
                ).fetchone()
            time.sleep(0.2)
        in_flight, batch_bytes = pending
        with sqlite3.connect(db_path) as db:
            scored_before = db.execute(
                "SELECT COUNT(*) FROM rewards WHERE run_id = ? AND step = ?", (run.run_id, in_flight)
            ).fetchone()[0]
        fed.kill(services["orchestrator"])
        fed.restart(services["trainer"])
        fed.wait_healthy(services["trainer"], 240)
        fed.restart(services["orchestrator"])
        fed.wait_healthy(services["orchestrator"], 240)
        run = run_to_end(stub, run.run_id)
        log_text = services["orchestrator"].log_path.read_text()
        applied = lineage(services["trainer"].address, run.run_id)
    assert run.state == pb.RUN_STATE_SUCCEEDED, run.error
    assert f"run {run.run_id}: step {in_flight} finished from its logged batch after the restart" in log_text
    steps = steps_of(run)
    assert [s["step"] for s in steps] == list(range(1, STEPS + 1))
    with sqlite3.connect(db_path) as db:
        (logged,) = db.execute(
            "SELECT length(batch) FROM steps WHERE run_id = ? AND step = ?", (run.run_id, in_flight)
        ).fetchone()
        scored_after = db.execute(
            "SELECT COUNT(*) FROM rewards WHERE run_id = ? AND step = ?", (run.run_id, in_flight)
        ).fetchone()[0]
    assert logged == batch_bytes and scored_after == scored_before > 0  # the same batch, not scored again
    # The trainer restarted from its last checkpoint (if any): the steps it lost were replayed, none twice.
    assert applied == trained_steps(run) and in_flight in applied
    ledger_matches_steps(run, steps)


def test_a_resumed_run_goes_on_with_its_own_online_confidence(tmp_path, model_cache):
    """client-0 judges its first PROBES calls (the first probe pass) honestly and inverts every reward
    after; client-1 and client-2 are honest, all three probe the same. With the online update the
    run demotes client-0 by step 2 (tests/test_federation.py walks through it). The orchestrator is
    killed after step 2: the resumed run takes its confidence back from its stored steps, so
    client-0 never judges again; started from the probes instead, it would be first by name again."""
    clients = [("add1", ["--fault", "poison", "--fault-after-calls", str(PROBES)]), ("add1", []), ("add1", [])]
    with federation(tmp_path, model_cache, clients) as (stub, fed, services):
        run = stub.CreateRun(pb.CreateRunRequest(spec=pb.RunSpec(
            tasks=["add1"], steps=6, questions_per_step=2, candidates_per_question=4, experts_per_question=2,
            max_tokens=8, expert_selection=pb.EXPERT_SELECTION_CONFIDENCE_GRAPH, confidence_update_rate=0.5,
        )))
        wait_for_step(stub, run.run_id, 2)
        fed.restart(services["orchestrator"], kill=True)
        fed.wait_healthy(services["orchestrator"], 240)
        run = run_to_end(stub, run.run_id)
        log_text = services["orchestrator"].log_path.read_text()
    assert run.state == pb.RUN_STATE_SUCCEEDED, run.error
    assert f"run {run.run_id} was RUN_STATE_RUNNING when the orchestrator stopped" in log_text
    steps = steps_of(run)
    assert [s["step"] for s in steps] == list(range(1, 7))
    assert "client-0" in steps[0]["rewards_by_client"]
    assert all("client-0" not in s["rewards_by_client"] for s in steps[2:])
    assert steps[-1]["confidence_by_client"]["client-0"] == 0.25


def test_a_run_whose_trainer_stays_away_fails_with_the_reason_and_the_next_run_trains(tmp_path, model_cache):
    with federation(
        tmp_path, model_cache, clients=[("add1", [])],
        orchestrator_args=["--no-confidence-graph", "--trainer-retry-seconds", "5"],
    ) as (stub, fed, services):
        fed.kill(services["trainer"])
        failed = run_to_end(stub, stub.CreateRun(pb.CreateRunRequest(spec=spec())).run_id)
        fed.restart(services["trainer"])
        fed.wait_healthy(services["trainer"], 240)
        short = pb.RunSpec()
        short.CopyFrom(spec())
        short.steps = 2
        after = run_to_end(stub, stub.CreateRun(pb.CreateRunRequest(spec=short)).run_id)
    assert failed.state == pb.RUN_STATE_FAILED
    assert failed.error.startswith("trainer call failed: UNAVAILABLE"), failed.error
    assert failed.steps_completed == 0 and failed.HasField("end_time")
    # The failure is the run's, not the orchestrator's: the next run, with the trainer back, trains.
    assert after.state == pb.RUN_STATE_SUCCEEDED, after.error
    assert [s["step"] for s in steps_of(after)] == [1, 2]
