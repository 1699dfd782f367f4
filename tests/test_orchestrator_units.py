"""Pure parts of the orchestrator: run-spec validation, expert selection, question sampling."""

import pytest

from fedgrpo import spec_enums
from fedgrpo.services.orchestrator.experts import ClientView, select_experts
from fedgrpo.services.orchestrator.questions import QuestionBank
from fedgrpo.services.orchestrator.spec import SpecError, resolve_spec, to_message
from fedgrpo.tasks import DOMAINS
from fedgrpo.v1 import orchestrator_pb2 as pb


def resolve(**fields):
    """Fields in JSON form: choice fields by their readable names (``loss_type="dr_grpo"``) or numbers."""
    return resolve_spec(spec_enums.spec_message(fields), DOMAINS.keys(), "tiny-policy", client_count=3,
                        max_model_len=512)


def test_defaults_are_filled_in_and_echoed():
    config = resolve(tasks=["add1"])
    assert (config.candidates_per_question, config.experts_per_question, config.loss_type) == (8, 2, "bnpo")
    assert config.model == "tiny-policy"
    msg = to_message(config)
    assert msg.HasField("steps") and msg.steps == config.steps
    assert msg.scale_rewards is True


def test_pooled_reading_samples_a_block_per_expert():
    assert resolve(tasks=["add1"]).samples_per_question == 8
    assert resolve(tasks=["add1"], reward_reading="pooled", experts_per_question=3).samples_per_question == 24


def test_dr_grpo_does_not_scale_by_std_unless_asked():
    assert resolve(tasks=["add1"], loss_type="dr_grpo").scale is False
    assert resolve(tasks=["add1"], loss_type="dr_grpo", scale_rewards=True).scale is True


def test_pooled_reading_does_not_scale_by_std_unless_asked_as_in_fedgrpos_released_code():
    pooled = resolve(tasks=["add1"], reward_reading="pooled")  # bnpo, scale_rewards unset
    assert pooled.loss_type == "bnpo" and pooled.scale is False
    assert to_message(pooled).scale_rewards is False  # the resolved spec says so
    assert resolve(tasks=["add1"], reward_reading="pooled", scale_rewards=True).scale is True
    assert resolve(tasks=["add1"], reward_reading="consensus").scale is True


def test_groups_without_signal_are_kept_unless_the_spec_drops_them():
    kept = resolve(tasks=["add1"])
    assert kept.zero_signal_groups == "keep" and to_message(kept).zero_signal_groups == pb.ZERO_SIGNAL_GROUPS_KEEP
    assert resolve(tasks=["add1"], zero_signal_groups="drop").zero_signal_groups == "drop"
    with pytest.raises(spec_enums.UnknownChoice) as err:  # a name no value has: refused before it is sent
        resolve(tasks=["add1"], zero_signal_groups="skip")
    assert err.value.field == "zero_signal_groups" and "got 'skip', expected one of keep, drop" in str(err.value)
    with pytest.raises(SpecError) as err:  # a number the enum lacks: refused by the orchestrator
        resolve(tasks=["add1"], zero_signal_groups=7)
    assert str(err.value).startswith("spec.zero_signal_groups: got 7, not a ZeroSignalGroups value")


@pytest.mark.parametrize(
    "fields, field, words",
    [
        ({"tasks": []}, "tasks", "name at least one task (`fedgrpo tasks` lists them), or a dataset"),
        ({"dataset": "clinic"}, "dataset", "no dataset 'clinic' is registered; registered: none"),
        ({"tasks": ["nope"]}, "tasks", "known"),
        ({"tasks": ["add1", "add1"]}, "tasks", "twice"),
        ({"tasks": ["add1"], "candidates_per_question": 1}, "candidates_per_question", "greater than or equal to 2"),
        ({"tasks": ["add1"], "experts_per_question": 0}, "experts_per_question", "greater than or equal to 1"),
        ({"tasks": ["add1"], "experts_per_question": 4}, "experts_per_question", "3 reward client"),
        ({"tasks": ["add1"], "steps": 0}, "steps", "greater than or equal to 1"),
        ({"tasks": ["add1"], "learning_rate": 0.0}, "learning_rate", "greater than 0"),
        ({"tasks": ["add1"], "learning_rate": -1.0}, "learning_rate", "greater than 0"),
        ({"tasks": ["add1"], "loss_type": 9}, "loss_type", "LOSS_TYPE_GRPO, LOSS_TYPE_BNPO, LOSS_TYPE_DR_GRPO"),
        ({"tasks": ["add1"], "model": "gpt-9"}, "model", "serves"),
        ({"tasks": ["add1"], "reward_reading": 9}, "reward_reading", "got 9, not a RewardReading value"),
        ({"tasks": ["add1"], "max_tokens": 600}, "max_tokens", "max_model_len"),
    ],
)
def test_invalid_specs_name_the_field_and_the_range(fields, field, words):
    with pytest.raises(SpecError) as err:
        resolve(**fields)
    assert err.value.field.startswith(field)
    assert words in str(err.value)


def test_a_spec_naming_a_dataset_takes_its_domains():
    datasets = {"clinic": ["icd", "triage"]}

    def with_datasets(**fields):
        return resolve_spec(pb.RunSpec(**fields), DOMAINS.keys(), "tiny-policy", client_count=3, max_model_len=512,
                            datasets=datasets)

    assert with_datasets(dataset="clinic").tasks == ["icd", "triage"]  # empty tasks: all of its domains
    assert with_datasets(dataset="clinic", tasks=["triage"]).tasks == ["triage"]
    assert to_message(with_datasets(dataset="clinic")).dataset == "clinic"
    with pytest.raises(SpecError, match="unknown task\\(s\\) \\['add1'\\] of dataset 'clinic'; known: icd, triage"):
        with_datasets(dataset="clinic", tasks=["add1"])
    with pytest.raises(SpecError, match="no dataset 'other' is registered; registered: \\['clinic'\\]"):
        with_datasets(dataset="other")


def test_experts_prefer_domain_holders_then_name_order():
    clients = [
        ClientView("c", ("add1",)),
        ClientView("a", ("mul1",)),
        ClientView("b", ("add1", "sub1")),
        ClientView("d", ("add1",), healthy=False),
    ]
    assert select_experts("add1", clients, 2) == ["b", "c"]
    assert select_experts("add1", clients, 3) == ["b", "c", "a"]
    assert select_experts("sub1", clients, 1) == ["b"]
    assert select_experts("add1", clients, 10) == ["b", "c", "a"]  # the unhealthy one never


def test_question_bank_is_deterministic_and_unlabelled():
    bank = QuestionBank(bank_seed=0, bank_size=50)
    a = bank.sample(["add1", "mul1"], step=3, count=6, seed=1)
    assert a == bank.sample(["add1", "mul1"], step=3, count=6, seed=1)
    assert a != bank.sample(["add1", "mul1"], step=4, count=6, seed=1)
    assert {q.domain for q in a} == {"add1", "mul1"}
    assert not hasattr(a[0], "entry")


def test_expert_selection_defaults_to_the_confidence_graph_when_there_is_one():
    spec = pb.RunSpec(tasks=["add1"])
    with_graph = resolve_spec(spec, DOMAINS.keys(), "tiny-policy", 3, 512, graph_available=True)
    without = resolve_spec(spec, DOMAINS.keys(), "tiny-policy", 3, 512, graph_available=False)
    assert (with_graph.expert_selection, without.expert_selection) == ("confidence_graph", "domain")
    assert to_message(with_graph).expert_selection == pb.EXPERT_SELECTION_CONFIDENCE_GRAPH


def test_named_reward_clients_must_exist_and_be_enough():
    spec = dict(tasks=["add1"], experts_per_question=2)
    live = {"a": True, "b": False, "c": True}
    named = resolve_spec(pb.RunSpec(**spec, reward_clients=["a", "c"]), DOMAINS.keys(), "m", live, 512)
    assert named.reward_clients == ["a", "c"]
    for names, field in [(["a", "zz"], "reward_clients"), (["a", "b"], "experts_per_question")]:
        with pytest.raises(SpecError) as err:
            resolve_spec(pb.RunSpec(**spec, reward_clients=names), DOMAINS.keys(), "m", live, 512)
        assert err.value.field == field


def test_a_join_description_may_name_an_organisations_own_domains_within_bounds():
    from fedgrpo.services.orchestrator.federation import description_problem
    from fedgrpo.v1 import common_pb2, reward_client_pb2

    def described(domains):
        return reward_client_pb2.DescribeResponse(
            name="org-a", domains=domains, evaluator_kinds=[common_pb2.EVALUATOR_KIND_ANSWER_BASED],
            reward_min=0.0, reward_max=1.0,
        )

    assert description_problem(described(["icd", "triage", "add1"])) is None
    assert description_problem(described([f"d{i}" for i in range(64)])) is None
    assert description_problem(described([f"d{i}" for i in range(65)])) == (
        "description.domains", "65 entries, expected at most 64")
    assert description_problem(described(["icd codes"])) == (
        "description.domains", "'icd codes': expected 1-64 letters, digits, '_', '-', '.'")
