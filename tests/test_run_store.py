"""RunStore keeps runs, steps, the reward ledger and the federation's state in SQLite across restarts."""

from __future__ import annotations

import gc
import json
import math
import sqlite3
import threading

import pytest
from google.protobuf import json_format

from fedgrpo.services.orchestrator.runs import DuplicateStep, PendingStep, RunStore, now
from fedgrpo.v1 import common_pb2
from fedgrpo.v1 import orchestrator_pb2 as pb


def spec(steps: int = 3) -> pb.RunSpec:
    return pb.RunSpec(steps=steps)


def version(v: int) -> common_pb2.PolicyVersion:
    return common_pb2.PolicyVersion(version=v)


def crash(store: RunStore, runs_dir) -> RunStore:
    """Drop the store without closing it, as a killed process would, and open the same files again."""
    del store
    gc.collect()
    return RunStore(runs_dir)


def metrics_lines(store: RunStore, run_id: str) -> list[dict]:
    path = store.run_dir(run_id) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_database_settings_and_schema_version(tmp_path):
    store = RunStore(tmp_path / "runs")
    assert store.db_path == tmp_path / "runs" / "orchestrator.sqlite3"
    assert store.database.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.database.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert store.database.execute("PRAGMA user_version").fetchone()[0] == 2
    store.close()
    with pytest.raises(sqlite3.ProgrammingError):
        store.database.execute("SELECT 1")


def test_database_path_can_be_elsewhere(tmp_path):
    store = RunStore(tmp_path / "runs", tmp_path / "state" / "db.sqlite3")
    run = store.create(spec())
    store.close()
    assert (tmp_path / "state" / "db.sqlite3").exists()
    assert not (tmp_path / "runs" / "orchestrator.sqlite3").exists()
    assert RunStore(tmp_path / "runs", tmp_path / "state" / "db.sqlite3").get(run.run_id) == run


def test_a_request_id_creates_one_run_and_survives_a_restart_and_an_old_database_gains_the_table(tmp_path):
    RunStore(tmp_path).close()
    db = sqlite3.connect(tmp_path / "orchestrator.sqlite3")  # as schema version 1 left it: no create_requests
    db.execute("DROP TABLE create_requests")
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    store = RunStore(tmp_path)
    first = store.create(spec(), "req-1", b"spec bytes")
    assert store.create(spec(), "req-1", b"spec bytes").run_id == first.run_id  # a racing retry
    assert store.created_by("req-1") == (first.run_id, b"spec bytes") and store.created_by("req-2") is None
    assert store.create(spec()).run_id != first.run_id  # no request_id: always a new run
    store = crash(store, tmp_path)
    assert store.created_by("req-1") == (first.run_id, b"spec bytes") and len(store.list()) == 2


def test_a_newer_schema_is_refused(tmp_path):
    RunStore(tmp_path).close()
    db = sqlite3.connect(tmp_path / "orchestrator.sqlite3")
    db.execute("PRAGMA user_version = 7")
    db.close()
    with pytest.raises(RuntimeError, match="schema version 7"):
        RunStore(tmp_path)


def test_runs_and_steps_survive_a_crash(tmp_path):
    store = RunStore(tmp_path)
    run = store.create(spec())
    store.update(run.run_id, state=pb.RUN_STATE_RUNNING, start_time=now())
    store.add_step(run.run_id, pb.StepMetrics(step=1, reward_mean=0.5), version(1))
    store.add_step(run.run_id, pb.StepMetrics(step=2, reward_mean=0.75), version(2))
    store.update(run.run_id, state=pb.RUN_STATE_SUCCEEDED, end_time=now())
    before = store.get(run.run_id)

    store = crash(store, tmp_path)
    after = store.get(run.run_id)
    assert after == before
    assert after.state == pb.RUN_STATE_SUCCEEDED and after.steps_completed == 2 and after.policy.version == 2
    assert store.completed_steps(run.run_id) == [1, 2]
    assert [r.run_id for r in store.list()] == [run.run_id]
    # the files users read are still there and agree with the database
    assert json_format.Parse((store.run_dir(run.run_id) / "run.json").read_text(), pb.Run()) == before
    assert [m["reward_mean"] for m in metrics_lines(store, run.run_id)] == [0.5, 0.75]


def test_the_database_not_the_files_is_the_truth(tmp_path):
    store = RunStore(tmp_path)
    run = store.create(spec())
    store.add_step(run.run_id, pb.StepMetrics(step=1), version(1))
    # A crash between the commit and the files: run.json stale, metrics.jsonl without the step.
    (store.run_dir(run.run_id) / "run.json").write_text("{}")
    (store.run_dir(run.run_id) / "metrics.jsonl").write_text("")

    store = crash(store, tmp_path)
    assert store.get(run.run_id).steps_completed == 1
    assert json_format.Parse((store.run_dir(run.run_id) / "run.json").read_text(), pb.Run()).steps_completed == 1
    assert [m["step"] for m in metrics_lines(store, run.run_id)] == [1]


def test_interrupted_runs_keep_their_state_and_are_offered_for_resumption(tmp_path):
    store = RunStore(tmp_path)
    queued_first = store.create(spec())
    running = store.create(spec())
    queued_second = store.create(spec())
    done = store.create(spec())
    store.update(running.run_id, state=pb.RUN_STATE_RUNNING, start_time=now())
    store.update(done.run_id, state=pb.RUN_STATE_SUCCEEDED, end_time=now())
    assert store.interrupted() == []  # nothing was interrupted in this process

    store = crash(store, tmp_path)
    interrupted = store.interrupted()
    assert [r.run_id for r in interrupted] == [running.run_id, queued_first.run_id, queued_second.run_id]
    assert [r.state for r in interrupted] == [pb.RUN_STATE_RUNNING, pb.RUN_STATE_QUEUED, pb.RUN_STATE_QUEUED]
    assert store.get(running.run_id).error == ""
    assert store.get(done.run_id).state == pb.RUN_STATE_SUCCEEDED
    # a run ended since start-up is no longer offered; one created since never was
    store.request_cancel(queued_first.run_id)
    store.create(spec())
    assert [r.run_id for r in store.interrupted()] == [running.run_id, queued_second.run_id]


def test_events_are_rebuilt_in_order(tmp_path):
    store = RunStore(tmp_path)
    run = store.create(spec())
    store.update(run.run_id, state=pb.RUN_STATE_RUNNING, start_time=now())
    for step in (1, 2, 3):
        store.add_step(run.run_id, pb.StepMetrics(step=step, loss=step / 10), version(step))
    store.update(run.run_id, state=pb.RUN_STATE_FAILED, end_time=now(), error="boom")

    store = crash(store, tmp_path)
    events = list(store.follow(run.run_id, lambda: True))
    assert [e.WhichOneof("event") for e in events] == ["step", "step", "step", "run"]
    assert [e.step.step for e in events[:3]] == [1, 2, 3]
    assert events[1].step.loss == pytest.approx(0.2)
    assert events[-1].run.state == pb.RUN_STATE_FAILED and events[-1].run.error == "boom"
    assert all(e.run_id == run.run_id for e in events)


def test_follow_of_a_resumed_run_goes_on_after_the_restart(tmp_path):
    store = RunStore(tmp_path)
    run = store.create(spec())
    store.update(run.run_id, state=pb.RUN_STATE_RUNNING, start_time=now())
    store.add_step(run.run_id, pb.StepMetrics(step=1), version(1))

    store = crash(store, tmp_path)
    events: list[pb.RunEvent] = []
    watcher = threading.Thread(target=lambda: events.extend(store.follow(run.run_id, lambda: True)))
    watcher.start()
    store.add_step(run.run_id, pb.StepMetrics(step=2), version(2))
    store.update(run.run_id, state=pb.RUN_STATE_SUCCEEDED, end_time=now())
    watcher.join(timeout=10)
    assert not watcher.is_alive()
    assert [e.step.step for e in events if e.HasField("step")] == [1, 2]
    assert events[-1].run.state == pb.RUN_STATE_SUCCEEDED


def test_cancel_request_survives_a_crash(tmp_path):
    store = RunStore(tmp_path)
    run = store.create(spec())
    store.update(run.run_id, state=pb.RUN_STATE_RUNNING)
    pending = store.request_cancel(run.run_id)
    assert pending.state == pb.RUN_STATE_RUNNING and pending.cancel_requested  # the caller sees it is pending
    assert store.cancel_requested(run.run_id) and store.get(run.run_id).cancel_requested
    store = crash(store, tmp_path)
    assert store.cancel_requested(run.run_id) and store.get(run.run_id).cancel_requested


def test_a_watch_resumes_after_the_last_step_it_received(tmp_path):
    store = RunStore(tmp_path)
    run = store.create(spec())
    store.update(run.run_id, state=pb.RUN_STATE_RUNNING, start_time=now())
    for step in (1, 2, 3):
        store.add_step(run.run_id, pb.StepMetrics(step=step), version(step))
    store.update(run.run_id, state=pb.RUN_STATE_SUCCEEDED, end_time=now())
    kinds = lambda events: [e.step.step if e.HasField("step") else pb.RunState.Name(e.run.state) for e in events]  # noqa: E731
    assert kinds(store.follow(run.run_id, lambda: True, after_step=2)) == [3, "RUN_STATE_SUCCEEDED"]
    assert kinds(store.follow(run.run_id, lambda: True, after_step=3)) == ["RUN_STATE_SUCCEEDED"]
    everything = kinds(store.follow(run.run_id, lambda: True))
    assert everything[0] == "RUN_STATE_QUEUED" and everything[-1] == "RUN_STATE_SUCCEEDED"
    assert kinds(store.follow(run.run_id, lambda: True, after_step=9)) == everything  # not reached: from the first


def test_begin_step_then_add_step(tmp_path):
    store = RunStore(tmp_path)
    run = store.create(spec())
    assert store.pending_step(run.run_id) is None
    store.begin_step(run.run_id, 1, b"first try", pb.StepMetrics(step=1, reward_mean=0.1))
    store.begin_step(run.run_id, 1, b"batch-1", pb.StepMetrics(step=1, reward_mean=0.2))  # replaces the first
    assert store.pending_step(run.run_id) == PendingStep(1, b"batch-1", pb.StepMetrics(step=1, reward_mean=0.2))

    store = crash(store, tmp_path)
    assert store.pending_step(run.run_id) == PendingStep(1, b"batch-1", pb.StepMetrics(step=1, reward_mean=0.2))
    assert store.completed_steps(run.run_id) == []
    store.add_step(run.run_id, pb.StepMetrics(step=1, reward_mean=0.2, loss=0.3), version(1))
    assert store.pending_step(run.run_id) is None
    assert store.completed_steps(run.run_id) == [1]
    assert store.completed_batches(run.run_id, 0) == [(1, b"batch-1")]


def test_a_step_that_trained_nothing_has_no_batch_to_replay(tmp_path):
    store = RunStore(tmp_path)
    run = store.create(spec())
    store.begin_step(run.run_id, 1, b"b1", pb.StepMetrics(step=1))
    store.add_step(run.run_id, pb.StepMetrics(step=1), version(1))
    store.begin_step(run.run_id, 2, None, pb.StepMetrics(step=2))
    assert store.pending_step(run.run_id).batch is None
    store.add_step(run.run_id, pb.StepMetrics(step=2), version(1))
    store.add_step(run.run_id, pb.StepMetrics(step=3), version(2))  # never begun: no batch either
    store.begin_step(run.run_id, 4, b"b4", pb.StepMetrics(step=4))  # begun, not completed
    store.begin_step(run.run_id, 5, b"b5", pb.StepMetrics(step=5))
    assert store.completed_steps(run.run_id) == [1, 2, 3]
    assert store.completed_batches(run.run_id, 0) == [(1, b"b1")]
    assert store.completed_batches(run.run_id, 1) == []
    assert store.pending_step(run.run_id).step == 5


def test_completed_batches_are_after_the_given_step_in_order(tmp_path):
    store = RunStore(tmp_path)
    run = store.create(spec())
    for step in (3, 1, 2, 4):
        store.begin_step(run.run_id, step, f"b{step}".encode(), pb.StepMetrics(step=step))
        store.add_step(run.run_id, pb.StepMetrics(step=step), version(step))
    assert store.completed_batches(run.run_id, 1) == [(2, b"b2"), (3, b"b3"), (4, b"b4")]
    assert store.completed_batches(run.run_id, 4) == []


def test_a_step_is_completed_once(tmp_path):
    store = RunStore(tmp_path)
    run = store.create(spec())
    store.begin_step(run.run_id, 1, b"b1", pb.StepMetrics(step=1))
    store.add_step(run.run_id, pb.StepMetrics(step=1, loss=0.5), version(1))
    events = len(store.records[run.run_id].events)

    with pytest.raises(DuplicateStep) as caught:
        store.add_step(run.run_id, pb.StepMetrics(step=1, loss=9.0), version(9))
    assert isinstance(caught.value, ValueError)
    assert (caught.value.run_id, caught.value.step) == (run.run_id, 1)
    with pytest.raises(DuplicateStep):
        store.begin_step(run.run_id, 1, b"again", pb.StepMetrics(step=1))

    assert [m["loss"] for m in metrics_lines(store, run.run_id)] == [0.5]
    assert len(store.records[run.run_id].events) == events
    assert store.get(run.run_id).policy.version == 1
    assert store.completed_batches(run.run_id, 0) == [(1, b"b1")]
    store = crash(store, tmp_path)
    assert [e.step.loss for e in store.records[run.run_id].events if e.HasField("step")] == [0.5]


def test_unknown_run_is_named(tmp_path):
    store = RunStore(tmp_path)
    with pytest.raises(KeyError, match="nope"):
        store.add_step("nope", pb.StepMetrics(step=1), version(1))
    with pytest.raises(KeyError, match="nope"):
        store.begin_step("nope", 1, None, pb.StepMetrics(step=1))


def test_reward_ledger_is_idempotent_and_keeps_nan(tmp_path):
    store = RunStore(tmp_path)
    run = store.create(spec())
    assert store.ledger.record(run.run_id, 1, "q1", "alice", [1.0, math.nan, 0.25])
    assert not store.ledger.record(run.run_id, 1, "q1", "alice", [0.0, 0.0, 0.0])
    assert store.ledger.record(run.run_id, 1, "q1", "bob", [0.5, 0.5, 0.5])
    assert store.ledger.record(run.run_id, 2, "q1", "alice", [1.0])
    assert store.ledger.size(run.run_id) == 3
    assert store.ledger.size("other") == 0
    stored = store.database.execute("SELECT rewards FROM rewards WHERE client = 'alice' AND step = 1").fetchone()[0]
    assert json.loads(stored, parse_constant=lambda c: pytest.fail(f"non-standard JSON {c}")) == [1.0, None, 0.25]

    store = crash(store, tmp_path)
    (q, client, rewards), bob = store.ledger.rewards_of(run.run_id, 1)
    assert (q, client) == ("q1", "alice")
    assert rewards[0] == 1.0 and math.isnan(rewards[1]) and rewards[2] == 0.25
    assert bob == ("q1", "bob", [0.5, 0.5, 0.5])
    assert store.ledger.rewards_of(run.run_id, 2) == [("q1", "alice", [1.0])]
    assert store.ledger.rewards_of(run.run_id, 3) == []


def test_rewards_of_a_step_the_restart_abandoned_leave_the_ledger(tmp_path):
    store = RunStore(tmp_path)
    run, other = store.create(spec()), store.create(spec())
    for step in (1, 2, 3):
        store.ledger.record(run.run_id, step, "q1", "alice", [1.0])
    store.ledger.record(other.run_id, 3, "q1", "alice", [1.0])
    store = crash(store, tmp_path)
    assert store.ledger.forget_after(run.run_id, 2) == 1
    assert store.ledger.rewards_of(run.run_id, 3) == []
    assert store.ledger.rewards_of(run.run_id, 2) == [("q1", "alice", [1.0])]
    assert store.ledger.rewards_of(other.run_id, 3) == [("q1", "alice", [1.0])]  # another run's step 3 stays
    assert store.ledger.forget_after(run.run_id, 2) == 0
    # The step scored again records its new rewards (the old row no longer shadows them).
    assert store.ledger.record(run.run_id, 3, "q1", "alice", [0.0])
    assert store.ledger.rewards_of(run.run_id, 3) == [("q1", "alice", [0.0])]


def test_confidence_graph_and_clients_round_trip(tmp_path):
    store = RunStore(tmp_path)
    assert store.federation.load_graph() is None
    assert store.federation.load_clients() == {}
    store.federation.save_graph('{"v": 1}')
    store.federation.save_graph('{"v": 2}')
    store.federation.save_client("alice", {"domains": ["math"], "port": 50061})
    store.federation.save_client("bob", {"domains": []})
    store.federation.save_client("alice", {"domains": ["math", "code"], "port": 50061})

    store = crash(store, tmp_path)
    assert store.federation.load_graph() == '{"v": 2}'
    assert store.federation.load_clients() == {
        "alice": {"domains": ["math", "code"], "port": 50061},
        "bob": {"domains": []},
    }


def test_concurrent_steps_on_different_runs(tmp_path):
    store = RunStore(tmp_path)
    runs = [store.create(spec()).run_id for _ in range(6)]
    errors: list[BaseException] = []

    def train(run_id: str) -> None:
        try:
            for step in range(1, 21):
                store.begin_step(run_id, step, f"{run_id}/{step}".encode(), pb.StepMetrics(step=step))
                store.ledger.record(run_id, step, "q", "alice", [float(step)])
                store.add_step(run_id, pb.StepMetrics(step=step), version(step))
        except BaseException as err:  # reported by the assertion below
            errors.append(err)

    threads = [threading.Thread(target=train, args=(r,)) for r in runs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []

    store = crash(store, tmp_path)
    for run_id in runs:
        assert store.completed_steps(run_id) == list(range(1, 21))
        assert store.get(run_id).steps_completed == 20
        assert store.ledger.size(run_id) == 20
        assert store.completed_batches(run_id, 19) == [(20, f"{run_id}/20".encode())]
        assert [m["step"] for m in metrics_lines(store, run_id)] == list(range(1, 21))


def test_runs_left_as_files_by_an_older_orchestrator_are_imported(tmp_path):
    legacy = pb.Run(run_id="old", state=pb.RUN_STATE_SUCCEEDED, steps_completed=2)
    unfinished = pb.Run(run_id="cut", state=pb.RUN_STATE_RUNNING)
    for run in (legacy, unfinished):
        (tmp_path / run.run_id).mkdir()
        (tmp_path / run.run_id / "run.json").write_text(json_format.MessageToJson(run))
    (tmp_path / "old" / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2}\n')

    store = RunStore(tmp_path)
    assert store.get("old") == legacy
    assert store.completed_steps("old") == [1, 2]
    assert store.get("cut").state == pb.RUN_STATE_FAILED  # no write-ahead log to resume it from
    assert store.interrupted() == []
    # imported once: files changed later do not override the database
    (tmp_path / "old" / "run.json").write_text(json_format.MessageToJson(pb.Run(run_id="old")))
    store = crash(store, tmp_path)
    assert store.get("old").state == pb.RUN_STATE_SUCCEEDED


def test_a_runs_online_confidence_survives_a_restart_and_stays_its_own(tmp_path):
    from fedgrpo.services.orchestrator.online_confidence import start_confidence

    probed = {"alice": 1.0, "bob": 1.0}
    store = RunStore(tmp_path)
    first, second = store.create(spec()), store.create(spec())
    store.add_step(first.run_id, pb.StepMetrics(step=1, confidence_by_client={"alice": 0.5, "bob": 1.0}), version(1))
    store.add_step(first.run_id, pb.StepMetrics(step=2, confidence_by_client={"alice": 0.25, "bob": 0.75}), version(2))

    store = crash(store, tmp_path)
    last = store.last_step(first.run_id)
    assert last.step == 2
    # the interrupted run resumes with its own confidence; another run starts from the probes
    assert start_confidence(probed, last.confidence_by_client) == {"alice": 0.25, "bob": 0.75}
    assert store.last_step(second.run_id) is None
    assert start_confidence(probed, None) == probed
