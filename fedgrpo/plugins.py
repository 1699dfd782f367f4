"""A user's own function, named in configuration: ``module:function`` or an entry point.

``load_function(spec, group, what, error)`` returns the callable that ``spec`` names:
``module:function`` (importable from the process's ``PYTHONPATH``; dotted attributes
allowed, ``module:Class.method``) or the name of an entry point of ``group`` in an
installed package. Anything else raises ``error`` with a message that says what is
wrong, calling the thing ``what`` (``checker 'x': module 'y' does not import: ...``).
Checkers (``fedgrpo/data/checkers.py``) and a training client's own objectives
(``services/reward_client/local_training/objectives.py``) are loaded this way, and
both read what such a function answers with ``unit_score``: ``True``/``False`` are
1/0, a number is clamped into [0, 1], anything else (NaN included) is None.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from importlib import metadata as importlib_metadata
from typing import Any


def load_function(spec: str, group: str, what: str, error: type[Exception], expected: str = "") -> Callable[..., Any]:
    """The function ``spec`` names (module docstring); ``expected`` lists other accepted names for the error."""
    if ":" in spec:
        function = _import(spec, what, error)
    else:
        points = [p for p in importlib_metadata.entry_points(group=group) if p.name == spec]
        if not points:
            raise error(f"unknown {what} {spec!r}: expected {expected + ', ' if expected else ''}a function as "
                        f"module:function, or an entry point of group {group!r}")
        try:
            function = points[0].load()
        except Exception as err:
            raise error(f"{what} {spec!r}: entry point {points[0].value!r} does not load: {err}") from None
    if not callable(function):
        raise error(f"{what} {spec!r} is a {type(function).__name__}, not a function")
    return function


def _import(spec: str, what: str, error: type[Exception]) -> Any:
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise error(f"{what} {spec!r}: expected module:function, e.g. my_checks:same_diagnosis")
    try:
        module = importlib.import_module(module_name)
    except Exception as err:
        raise error(f"{what} {spec!r}: module {module_name!r} does not import: {err}") from None
    function = module
    for part in attribute.split("."):
        if not hasattr(function, part):
            raise error(f"{what} {spec!r}: module {module_name!r} has no {attribute!r}")
        function = getattr(function, part)
    return function


def unit_score(value: Any) -> float | None:
    """A user function's answer as a score in [0, 1] (module docstring); None when it is not a number."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)) and not math.isnan(value):
        return min(1.0, max(0.0, float(value)))
    return None
