"""The run spec's choice fields: proto enums on the wire, readable lowercase names for people.

A choice field (``RunSpec.loss_type``, ``reward_reading``, ``expert_selection``,
``zero_signal_groups``, ``reward_fusion``, ``preset``, ``algorithm``; ``OptimizerSettings.loss_type``)
is an enum on the wire. Its values' readable names are the enum value names less the
enum's prefix, lowercased: ``LOSS_TYPE_DR_GRPO`` <-> ``dr_grpo``. Those are the names
``RunConfig``, TOML files, ``--spec KEY=VALUE`` and the client library use; the
``*_UNSPECIFIED`` value (0) has none: it means "the default".

* ``readable(enum, number, field)``: the readable name of a number, None for 0;
  ``UnknownChoice`` for a number the enum does not have (a newer or broken client).
* ``number(enum, name, field)``: the number of a readable name (``dr_grpo``) or an enum
  value name (``LOSS_TYPE_DR_GRPO``); ``UnknownChoice`` for any other.
* ``names(enum)``: every readable name, in enum order.
* ``json_spec(mapping)``: a RunSpec in JSON form (a dict) whose choice values may be
  readable names, with those replaced by enum value names, as ``json_format.ParseDict``
  takes them; ``spec_message(mapping)`` parses it into a ``RunSpec``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import EnumDescriptor

from fedgrpo.v1 import orchestrator_pb2 as pb


class UnknownChoice(ValueError):
    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field, self.problem = field, problem


def _prefix(enum: EnumDescriptor) -> str:
    # buf's ENUM_ZERO_VALUE_SUFFIX / ENUM_VALUE_PREFIX: every value starts as the zero value does.
    return enum.values_by_number[0].name.removesuffix("UNSPECIFIED")


def names(enum: EnumDescriptor) -> list[str]:
    prefix = _prefix(enum)
    return [v.name.removeprefix(prefix).lower() for v in enum.values if v.number != 0]


def readable(enum: EnumDescriptor, value: int, field: str) -> str | None:
    if value == 0:
        return None
    if value not in enum.values_by_number:
        raise UnknownChoice(field, f"got {value}, not a {enum.name} value; expected one of "
                                   f"{', '.join(v.name for v in enum.values if v.number != 0)} (or unset)")
    return enum.values_by_number[value].name.removeprefix(_prefix(enum)).lower()


def number(enum: EnumDescriptor, name: str, field: str) -> int:
    value = enum.values_by_name.get(name) or enum.values_by_name.get(_prefix(enum) + name.upper())
    if value is None or (value.number == 0 and name != value.name):
        raise UnknownChoice(field, f"got {name!r}, expected one of {', '.join(names(enum))}")
    return value.number


def json_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """``spec`` with readable choice names turned into enum value names (keys: field or JSON names)."""
    out = dict(spec)
    for f in pb.RunSpec.DESCRIPTOR.fields:
        if f.enum_type is None:
            continue
        for key in {f.name, f.json_name}:
            if isinstance(out.get(key), str):
                out[key] = f.enum_type.values_by_number[number(f.enum_type, out[key], f.name)].name
    return out


def spec_message(spec: Mapping[str, Any]) -> pb.RunSpec:
    """A RunSpec from its JSON form; choice fields may carry readable names (``"loss_type": "dr_grpo"``).
    Raises ``UnknownChoice`` for a choice no enum value has, ``json_format.ParseError`` for other faults."""
    return json_format.ParseDict(json_spec(spec), pb.RunSpec())
