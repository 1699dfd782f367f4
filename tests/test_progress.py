"""What a followed run reports per step (pure): the TensorBoard scalars of a step's metrics, the running accuracy."""

import pytest

from fedgrpo.progress import running_accuracy, step_figures, step_scalars
from fedgrpo.v1 import orchestrator_pb2 as pb


def test_every_numeric_field_but_the_step_is_a_scalar_and_maps_give_one_per_key():
    m = pb.StepMetrics(step=7, reward_mean=0.5, accuracy=0.25, loss=-0.1, rewards_received=12,
                       rewards_by_client={"b": 8, "a": 4}, confidence_by_client={"a": 0.75})
    scalars = step_scalars(m)
    assert "step" not in scalars
    assert scalars["reward_mean"] == 0.5 and scalars["accuracy"] == 0.25 and scalars["loss"] == -0.1
    assert scalars["rewards_received"] == 12.0 and scalars["kl"] == 0.0  # unset numbers are 0, still written
    assert scalars["rewards_by_client/a"] == 4.0 and scalars["rewards_by_client/b"] == 8.0
    assert scalars["confidence_by_client/a"] == 0.75
    assert not any(k.startswith("router_weight_by_client") for k in scalars)  # an empty map writes nothing
    scalar_fields = {f.name for f in pb.StepMetrics.DESCRIPTOR.fields if f.message_type is None} - {"step"}
    assert scalar_fields <= set(scalars)


def test_running_accuracy_weighs_each_step_by_the_rewards_it_received():
    steps = [{"accuracy": 1.0, "rewards_received": 3}, {"accuracy": 0.0, "rewards_received": 1}]
    assert running_accuracy(steps) == pytest.approx(0.75)
    assert running_accuracy([{"accuracy": 0.9, "rewards_received": 0}]) == 0.0  # nothing heard, nothing judged
    assert running_accuracy([]) == 0.0


def test_a_parameter_exchange_round_shows_its_clients_rewards_and_bytes_not_a_fedgrpo_accuracy():
    fedgrpo = pb.StepMetrics(step=1, reward_mean=0.5, accuracy=1.0, rewards_received=4, step_seconds=3)
    assert step_figures(fedgrpo, [{"accuracy": 1.0, "rewards_received": 4}]) == (
        "reward 0.50 | correct so far 1.00 | 3s/step")
    fedmoa = pb.StepMetrics(step=2, step_seconds=90, round=pb.RoundMetrics(
        participants=["a", "b"], missing=["c"], rejected_by_client={"b": "adapter: NaN"},
        local_reward_by_client={"a": 0.5, "b": 0.25}, validation_accuracy_by_client={"a": 0.5},
        adapter_bytes_down_by_client={"a": 1_000_000, "b": 1_000_000}, adapter_bytes_up_by_client={"a": 500_000}))
    shown = step_figures(fedmoa, [])
    assert shown == ("2 clients, 1 missing, 1 refused | local reward 0.38 | validation 0.50 | 2.5 MB moved | "
                     "90s/round")
    assert "correct so far" not in step_figures(pb.StepMetrics(round=pb.RoundMetrics(attempts=1)), [])
