"""The policy trainer as a real process with the tiny model."""

import grpc
import pytest
import torch
from transformers import AutoModelForCausalLM

from fedgrpo.job.launcher import Federation
from fedgrpo.v1 import policy_trainer_pb2 as pb

from .conftest import START_TIMEOUT, trainer_stub

pytestmark = pytest.mark.integration

OPTIMIZER = pb.OptimizerSettings(
    learning_rate=1e-3, loss_type="bnpo", beta=0.04, epsilon_low=0.2, epsilon_high=0.3,
    updates_per_batch=2, max_grad_norm=1.0,
)


@pytest.fixture(scope="module")
def trainer(tmp_path_factory, model_cache):
    tmp = tmp_path_factory.mktemp("trainer")
    with Federation(tmp / "logs") as fed:
        service = fed.start(
            "trainer", "trainer",
            ["--model", "tiny-policy", "--cache-dir", str(model_cache), "--state-dir", str(tmp / "state"),
             "--checkpoint-every", "1", "--torch-threads", "1"],
        )
        fed.wait_healthy(service, START_TIMEOUT)
        yield trainer_stub(service.address), fed, service


def batch(step, version, advantage_sign=1.0):
    seqs = [
        pb.TrainSequence(prompt_token_ids=[1, 40, 41, 42], completion_token_ids=[50, 51, 52], advantage=advantage_sign),
        pb.TrainSequence(prompt_token_ids=[1, 40, 43], completion_token_ids=[60, 61], advantage=-advantage_sign),
    ]
    return pb.TrainBatch(run_id="r1", step=step, policy_version=version, sequences=seqs, max_completion_tokens=8)


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
    stub.Train(pb.TrainBatch(run_id="r2", step=1, policy_version=0, sequences=batch(1, 0).sequences, max_completion_tokens=8))
    resumed = stub.StartPolicy(pb.StartPolicyRequest(run_id="r2", optimizer=OPTIMIZER))
    assert resumed.version == 1
    fresh = stub.StartPolicy(pb.StartPolicyRequest(run_id="r2", optimizer=OPTIMIZER, restart=True))
    assert fresh.version == 0


@pytest.mark.parametrize(
    "change, field",
    [
        ({"learning_rate": 0.0}, "optimizer.learning_rate"),
        ({"loss_type": "ppo"}, "optimizer.loss_type"),
        ({"beta": -1.0}, "optimizer.beta"),
        ({"epsilon_low": 1.5}, "optimizer.epsilon_low"),
        ({"updates_per_batch": 0}, "optimizer.updates_per_batch"),
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
    cases = [
        (pb.TrainBatch(run_id="r3", step=1), "sequences"),
        (pb.TrainBatch(run_id="r3", step=1, sequences=[pb.TrainSequence(prompt_token_ids=[1], completion_token_ids=[10**6])]),
         "sequences[0].completion_token_ids"),
        (pb.TrainBatch(run_id="r3", step=1, sequences=[pb.TrainSequence(prompt_token_ids=[], completion_token_ids=[3])]),
         "sequences[0].prompt_token_ids"),
        (pb.TrainBatch(run_id="r3", step=1, sequences=[pb.TrainSequence(prompt_token_ids=[1], completion_token_ids=[3, 4], completion_logprobs=[-1.0])]),
         "sequences[0].completion_logprobs"),
        (pb.TrainBatch(run_id="r3", step=1, sequences=[pb.TrainSequence(prompt_token_ids=[1], completion_token_ids=[3], advantage=float("nan"))]),
         "sequences[0].advantage"),
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
