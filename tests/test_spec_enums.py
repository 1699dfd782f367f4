"""The run spec's enums and their readable names (pure): every value has a name and back, none forgotten.

The enums are walked through their descriptors, so a value added to a proto enum without its place in
``RunConfig`` (or the trainer's ``LOSS_TYPES``) fails here, not in a run.
"""

import typing

import pytest

from fedgrpo import spec_enums
from fedgrpo.services.orchestrator.spec import RunConfig, optimizer_settings, resolve_spec, stored_config, to_message
from fedgrpo.services.policy_trainer.loss import LOSS_TYPES
from fedgrpo.v1 import common_pb2
from fedgrpo.v1 import orchestrator_pb2 as pb
from fedgrpo.v1 import policy_trainer_pb2 as tpb

ENUM_FIELDS = [f for f in pb.RunSpec.DESCRIPTOR.fields if f.enum_type is not None]


def allowed(field: str) -> set[str]:
    """The readable values RunConfig's Literal (or Literal | None) field accepts."""
    annotation = RunConfig.model_fields[field].annotation
    literal = next(a for a in (annotation, *typing.get_args(annotation)) if typing.get_origin(a) is typing.Literal)
    return set(typing.get_args(literal))


def test_every_choice_field_of_the_spec_is_an_enum_and_the_trainers_loss_type_too():
    assert {f.name for f in ENUM_FIELDS} == {
        "loss_type", "reward_reading", "expert_selection", "zero_signal_groups", "reward_fusion", "preset", "algorithm"}
    assert tpb.OptimizerSettings.DESCRIPTOR.fields_by_name["loss_type"].enum_type is common_pb2.LossType.DESCRIPTOR


@pytest.mark.parametrize("field", ENUM_FIELDS, ids=lambda f: f.name)
def test_every_enum_value_has_a_readable_name_runconfig_accepts_and_back(field):
    enum = field.enum_type
    assert enum.values_by_number[0].name.endswith("_UNSPECIFIED")
    assert spec_enums.readable(enum, 0, field.name) is None  # unset: the default
    named = {}
    for value in enum.values:
        if value.number == 0:
            continue
        name = spec_enums.readable(enum, value.number, field.name)
        assert value.name.lower().endswith(name)
        assert spec_enums.number(enum, name, field.name) == value.number
        assert spec_enums.number(enum, value.name, field.name) == value.number  # the enum's own name works too
        named[name] = value.number
    assert set(named) == allowed(field.name), "an enum value without a RunConfig value, or the other way round"
    assert spec_enums.names(enum) == list(named)


def test_the_readable_names_are_the_lowercase_tails():
    enum = common_pb2.LossType.DESCRIPTOR
    assert spec_enums.names(enum) == ["grpo", "bnpo", "dr_grpo", "dapo"]
    assert spec_enums.names(enum) == list(LOSS_TYPES)  # the trainer's loss variants, one for one
    graph = spec_enums.number(pb.ExpertSelection.DESCRIPTOR, "confidence_graph", "x")
    assert graph == pb.EXPERT_SELECTION_CONFIDENCE_GRAPH


@pytest.mark.parametrize("name", ["ppo", "unspecified", "", "LOSS_TYPE_PPO", "DR-GRPO"])
def test_a_name_no_value_has_is_refused_naming_the_field_and_the_choices(name):
    with pytest.raises(spec_enums.UnknownChoice) as err:
        spec_enums.number(common_pb2.LossType.DESCRIPTOR, name, "loss_type")
    assert err.value.field == "loss_type"
    assert str(err.value) == f"loss_type: got {name!r}, expected one of grpo, bnpo, dr_grpo, dapo"


def test_an_unknown_number_is_refused_naming_the_field():
    with pytest.raises(spec_enums.UnknownChoice, match=r"^preset: got 7, not a Preset value; expected one of "
                       r"PRESET_FEDGRPO, PRESET_MOR \(or unset\)$"):
        spec_enums.readable(pb.Preset.DESCRIPTOR, 7, "preset")


def test_a_json_spec_takes_readable_names_under_field_or_json_names():
    msg = spec_enums.spec_message({"tasks": ["add1"], "loss_type": "dr_grpo", "rewardFusion": "mean",
                                   "preset": "PRESET_MOR", "zero_signal_groups": 2, "steps": 3})
    assert (msg.loss_type, msg.reward_fusion, msg.preset, msg.zero_signal_groups, msg.steps) == (
        common_pb2.LOSS_TYPE_DR_GRPO, pb.REWARD_FUSION_MEAN, pb.PRESET_MOR, pb.ZERO_SIGNAL_GROUPS_DROP, 3)
    assert msg.reward_reading == pb.REWARD_READING_UNSPECIFIED and msg.expert_selection == 0
    with pytest.raises(spec_enums.UnknownChoice, match="^reward_reading: got 'median'"):
        spec_enums.spec_message({"reward_reading": "median"})


@pytest.mark.parametrize("field", ENUM_FIELDS, ids=lambda f: f.name)
def test_each_value_goes_through_the_orchestrator_as_its_readable_name_and_is_echoed_as_the_enum(field):
    for name in spec_enums.names(field.enum_type):
        spec = {"tasks": ["add1"], field.name: name}
        config = resolve_spec(spec_enums.spec_message(spec), ["add1"], "m", 3, 512, graph_available=True)
        assert getattr(config, field.name) == name
        echoed = to_message(config)
        assert spec_enums.readable(field.enum_type, getattr(echoed, field.name), field.name) == name
        resumed = stored_config(echoed)  # a resumed run reads back what was accepted (scale_rewards resolved)
        assert resumed.model_dump(exclude={"scale_rewards"}) == config.model_dump(exclude={"scale_rewards"})


def test_the_trainer_is_told_the_loss_type_as_its_enum():
    for name in LOSS_TYPES:
        config = RunConfig(tasks=["add1"], loss_type=name)
        sent = optimizer_settings(config)
        assert spec_enums.readable(common_pb2.LossType.DESCRIPTOR, sent.loss_type, "loss_type") == name
