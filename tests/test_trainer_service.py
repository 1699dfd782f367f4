"""The policy trainer as a real process with the tiny model."""

import os
import signal

import grpc
import pytest
import torch
from transformers import AutoModelForCausalLM

from fedgrpo.job.launcher import Federation
from fedgrpo.services.policy_trainer.trainer import CheckpointError, checkpoint_lineage
from fedgrpo.v1 import common_pb2
from fedgrpo.v1 import policy_trainer_pb2 as pb

from .conftest import START_TIMEOUT, trainer_stub

pytestmark = pytest.mark.integration

OPTIMIZER = pb.OptimizerSettings(
    learning_rate=1e-3, loss_type=common_pb2.LOSS_TYPE_BNPO, beta=0.04, epsilon_low=0.2, epsilon_high=0.3,
    updates_per_batch=2, max_grad_norm=1.0,
)


def start_trainer(fed, name, model_cache, state_dir, checkpoint_every):
    service = fed.start(
        name, "trainer",
        ["--model", "tiny-policy", "--cache-dir", str(model_cache), "--state-dir", str(state_dir),
         "--checkpoint-every", str(checkpoint_every), "--torch-threads", "1", "--plaintext"],
    )
    fed.wait_healthy(service, START_TIMEOUT)
    return service


@pytest.fixture(scope="module")
def trainer(tmp_path_factory, model_cache):
    tmp = tmp_path_factory.mktemp("trainer")
    with Federation(tmp / "logs") as fed:
        service = start_trainer(fed, "trainer", model_cache, tmp / "state", checkpoint_every=1)
        yield trainer_stub(service.address), fed, service


def batch(step, version, advantage_sign=1.0, run_id="r1"):
    seqs = [
        pb.TrainSequence(prompt_token_ids=[1, 40, 41, 42], completion_token_ids=[50, 51, 52], advantage=advantage_sign),
        pb.TrainSequence(prompt_token_ids=[1, 40, 43], completion_token_ids=[60, 61], advantage=-advantage_sign),
    ]
    return pb.TrainBatch(run_id=run_id, step=step, policy_version=version, sequences=seqs, max_completion_tokens=8)


def lineage(stub, run_id):
    return stub.GetLineage(pb.GetPolicyVersionRequest(run_id=run_id))


def train_steps(stub, run_id, steps):
    """Apply ``steps`` in order, each sampled by the version before it; return the responses."""
    return [stub.Train(batch(step, version, run_id=run_id)) for version, step in enumerate(steps)]


def test_train_publishes_a_loadable_snapshot_and_is_idempotent(trainer):
    stub, _, _ = trainer
    v0 = stub.StartPolicy(pb.StartPolicyRequest(run_id="r1", optimizer=OPTIMIZER, restart=True))
    assert v0.version == 0
    base = AutoModelForCausalLM.from_pretrained(v0.weights_path)

    first = stub.Train(batch(1, 0))
    assert first.policy.version == 1
    assert first.metrics.sequences == 2 and first.metrics.tokens == 5
    updated = AutoModelForCausalLM.from_pretrained(first.policy.weights_path)
    changed = any(
        not torch.equal(a, b) for a, b in zip(base.state_dict().values(), updated.state_dict().values())
    )
    assert changed, "the snapshot must hold the updated weights"

    # The same step again (a retry) is answered with the recorded result, not applied twice.
    again = stub.Train(batch(1, 0))
    assert again.policy.version == 1 and again.metrics.loss == first.metrics.loss
    assert stub.GetPolicyVersion(pb.GetPolicyVersionRequest(run_id="r1")).version == 1

    # A batch sampled by an older version is refused.
    with pytest.raises(grpc.RpcError) as err:
        stub.Train(batch(2, 0))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "policy_version" in err.value.details()

    second = stub.Train(batch(2, 1))
    assert second.policy.version == 2 and second.metrics.kl > 0  # beta > 0: the reference is in play


def test_resume_from_checkpoint_keeps_version(trainer):
    stub, _, _ = trainer
    stub.StartPolicy(pb.StartPolicyRequest(run_id="r2", optimizer=OPTIMIZER, restart=True))
    stub.Train(pb.TrainBatch(run_id="r2", step=1, policy_version=0, sequences=batch(1, 0).sequences,
                             max_completion_tokens=8))
    # Another run in between, so coming back to r2 reloads its checkpoint.
    stub.StartPolicy(pb.StartPolicyRequest(run_id="r2-other", optimizer=OPTIMIZER, restart=True))
    resumed = stub.StartPolicy(pb.StartPolicyRequest(run_id="r2", optimizer=OPTIMIZER))
    assert (resumed.version, resumed.last_step) == (1, 1)
    assert list(lineage(stub, "r2").applied_steps) == [1]
    fresh = stub.StartPolicy(pb.StartPolicyRequest(run_id="r2", optimizer=OPTIMIZER, restart=True))
    assert fresh.version == 0


@pytest.mark.parametrize(
    "change, field",
    [
        ({"learning_rate": 0.0}, "optimizer.learning_rate"),
        ({"loss_type": 99}, "optimizer.loss_type"),  # a LossType this trainer does not know
        ({"beta": -1.0}, "optimizer.beta"),
        ({"epsilon_low": 1.5}, "optimizer.epsilon_low"),
        ({"updates_per_batch": 0}, "optimizer.updates_per_batch"),
        # Set explicitly, 0 is greedy sampling: no log-probabilities to train on (unset is 1.0).
        ({"temperature": 0.0}, "optimizer.temperature"),
        ({"temperature": -0.7}, "optimizer.temperature"),
        ({"temperature": float("nan")}, "optimizer.temperature"),
        ({"temperature": float("inf")}, "optimizer.temperature"),
    ],
)
def test_bad_optimizer_settings_are_invalid_argument(trainer, change, field):
    stub, _, _ = trainer
    settings = pb.OptimizerSettings()
    settings.CopyFrom(OPTIMIZER)
    for k, v in change.items():
        setattr(settings, k, v)
    with pytest.raises(grpc.RpcError) as err:
        stub.StartPolicy(pb.StartPolicyRequest(run_id="bad", optimizer=settings))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(field)


def test_bad_batches_are_refused_with_the_field(trainer):
    stub, _, _ = trainer
    stub.StartPolicy(pb.StartPolicyRequest(run_id="r3", optimizer=OPTIMIZER, restart=True))
    def one(**sequence) -> pb.TrainBatch:
        return pb.TrainBatch(run_id="r3", step=1, sequences=[pb.TrainSequence(**sequence)])

    cases = [
        (pb.TrainBatch(run_id="r3", step=1), "sequences"),
        (one(prompt_token_ids=[1], completion_token_ids=[10**6]), "sequences[0].completion_token_ids"),
        (one(prompt_token_ids=[], completion_token_ids=[3]), "sequences[0].prompt_token_ids"),
        (one(prompt_token_ids=[1], completion_token_ids=[3, 4], completion_logprobs=[-1.0]),
         "sequences[0].completion_logprobs"),
        (one(prompt_token_ids=[1], completion_token_ids=[3], advantage=float("nan")), "sequences[0].advantage"),
    ]
    for request, field in cases:
        with pytest.raises(grpc.RpcError) as err:
            stub.Train(request)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, field
        assert err.value.details().startswith(field), err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        stub.Train(pb.TrainBatch(run_id="elsewhere", step=1, sequences=batch(1, 0).sequences))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    # nothing was applied
    assert stub.GetPolicyVersion(pb.GetPolicyVersionRequest(run_id="r3")).version == 0


def test_lineage_lists_each_applied_step_once(trainer):
    stub, _, _ = trainer
    stub.StartPolicy(pb.StartPolicyRequest(run_id="r4", optimizer=OPTIMIZER, restart=True))
    assert list(lineage(stub, "r4").applied_steps) == []
    *_, third = train_steps(stub, "r4", [1, 2, 3])
    assert (third.policy.version, third.policy.last_step) == (3, 3)
    got = stub.GetPolicyVersion(pb.GetPolicyVersionRequest(run_id="r4"))
    assert (got.version, got.last_step) == (3, 3)
    assert list(lineage(stub, "r4").applied_steps) == [1, 2, 3]

    # A retried step is answered from the record and not applied again.
    again = stub.Train(batch(3, 2, run_id="r4"))
    assert again.metrics.loss == third.metrics.loss and again.policy.last_step == 3
    assert list(lineage(stub, "r4").applied_steps) == [1, 2, 3]


def test_get_lineage_checks_the_run(trainer):
    stub, _, _ = trainer
    with pytest.raises(grpc.RpcError) as err:
        lineage(stub, "no spaces allowed")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith("run_id")
    with pytest.raises(grpc.RpcError) as err:
        lineage(stub, "never-started")
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "run_id never-started" in err.value.details()


def test_start_policy_on_a_live_run_keeps_its_weights(tmp_path, model_cache):
    with Federation(tmp_path / "logs") as fed:
        stub = trainer_stub(start_trainer(fed, "trainer", model_cache, tmp_path / "state", checkpoint_every=2).address)
        stub.StartPolicy(pb.StartPolicyRequest(run_id="live", optimizer=OPTIMIZER, restart=True))
        train_steps(stub, "live", [1, 2, 3])
        # The checkpoint holds step 2: reloading it would silently drop step 3.
        for _ in range(2):
            again = stub.StartPolicy(pb.StartPolicyRequest(run_id="live", optimizer=OPTIMIZER))
            assert (again.version, again.last_step) == (3, 3)
        got = lineage(stub, "live")
        assert list(got.applied_steps) == [1, 2, 3] and got.checkpoint_step == 2


def test_a_killed_trainer_resumes_its_checkpoint_and_accepts_the_replay(tmp_path, model_cache):
    state = tmp_path / "state"
    with Federation(tmp_path / "logs") as fed:
        first = start_trainer(fed, "trainer", model_cache, state, checkpoint_every=2)
        stub = trainer_stub(first.address)
        stub.StartPolicy(pb.StartPolicyRequest(run_id="crash", optimizer=OPTIMIZER, restart=True))
        *_, lost = train_steps(stub, "crash", [1, 2, 3])
        assert lineage(stub, "crash").checkpoint_step == 2

        # No chance to save anything: step 3 exists only in the caller's log.
        os.killpg(first.process.pid, signal.SIGKILL)
        first.process.wait()

        stub = trainer_stub(start_trainer(fed, "trainer-restarted", model_cache, state, checkpoint_every=2).address)
        resumed = stub.StartPolicy(pb.StartPolicyRequest(run_id="crash", optimizer=OPTIMIZER))
        assert (resumed.version, resumed.last_step) == (2, 2)
        got = lineage(stub, "crash")
        assert list(got.applied_steps) == [1, 2] and got.checkpoint_step == 2

        replayed = stub.Train(batch(3, 2, run_id="crash"))
        assert (replayed.policy.version, replayed.policy.last_step) == (3, 3)
        # Same weights, optimiser state and batch as before the crash: the same update.
        assert replayed.metrics.loss == pytest.approx(lost.metrics.loss, rel=1e-5)
        assert list(lineage(stub, "crash").applied_steps) == [1, 2, 3]


def test_checkpoint_lineage_is_read_or_derived_and_checked(tmp_path):
    assert checkpoint_lineage({"version": 2, "last_step": 5, "applied_steps": [3, 5]}, tmp_path) == [3, 5]
    # Checkpoints from before lineage was recorded: only 1..last_step can be proven.
    assert checkpoint_lineage({"version": 3, "last_step": 3}, tmp_path) == [1, 2, 3]
    for state in (
        {"version": 2, "last_step": 5},
        {"version": 3, "last_step": 5, "applied_steps": [3, 5]},
        {"version": 2, "last_step": 3, "applied_steps": [3, 3]},
    ):
        with pytest.raises(CheckpointError, match="state.json"):
            checkpoint_lineage(state, tmp_path)


def test_batches_sampled_behind_need_the_run_lag_and_the_sampler_logprobs(trainer):
    stub, _, _ = trainer
    lagged = pb.OptimizerSettings()
    lagged.CopyFrom(OPTIMIZER)
    lagged.max_policy_lag = 1
    stub.StartPolicy(pb.StartPolicyRequest(run_id="r-lag", optimizer=lagged, restart=True))
    stub.Train(batch(1, 0, run_id="r-lag"))
    # Sampled by v0 while v1 trains it: fine within the lag, but only with the sampler's log-probabilities.
    with pytest.raises(grpc.RpcError) as err:
        stub.Train(batch(2, 0, run_id="r-lag"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith("sequences[0].completion_logprobs: required")
    behind = batch(2, 0, run_id="r-lag")
    for s in behind.sequences:
        s.completion_logprobs.extend([-1.0] * len(s.completion_token_ids))
    assert stub.Train(behind).policy.version == 2
    behind.step = 3  # two versions behind
    with pytest.raises(grpc.RpcError) as err:
        stub.Train(behind)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "policy_version" in err.value.details()
    # A lag the trainer's snapshots cannot cover (it keeps 2), and one out of range.
    lagged.max_policy_lag = 2
    with pytest.raises(grpc.RpcError) as err:
        stub.StartPolicy(pb.StartPolicyRequest(run_id="r-lag2", optimizer=lagged, restart=True))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "--keep-snapshots" in err.value.details()
    lagged.max_policy_lag = 17
    with pytest.raises(grpc.RpcError) as err:
        stub.StartPolicy(pb.StartPolicyRequest(run_id="r-lag2", optimizer=lagged, restart=True))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith("optimizer.max_policy_lag")
