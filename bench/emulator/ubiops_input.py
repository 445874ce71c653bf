"""The UbiOps platform's check of a create call's inputs, before anything is created.

A structured deployment declares typed input fields; the platform refuses a direct or batch create whose input
misses one or holds a value of the wrong type, and "if one of the requests is faulty, all requests are denied"
(the reference). Checking here, not when a request is processed, makes a wrong ``fields`` mapping show up on
loopback as it does on the platform: a refused call (400), not a request that fails later.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["FIELD_TYPES", "input_problem"]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _array(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, list) and all(check(x) for x in v)


def _is_str(v: Any) -> bool:
    return isinstance(v, str)


# the platform's input data types; a file is given as a string (a ``ubiops-file://`` URI)
FIELD_TYPES: dict[str, Callable[[Any], bool]] = {
    "int": _is_int, "double": _is_number, "string": _is_str, "bool": lambda v: isinstance(v, bool),
    "dict": lambda v: isinstance(v, dict), "file": _is_str,
    "array_int": _array(_is_int), "array_double": _array(_is_number), "array_string": _array(_is_str),
    "array_file": _array(_is_str),
}


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "bool", int: "int", float: "double", str: "string", list: "array", dict: "dict"}.get(
        type(value), type(value).__name__)


def input_problem(input_type: str, fields: Sequence[str], field_types: Sequence[str],
                  items: Sequence[Any]) -> str | None:
    """Why the platform refuses these inputs (the whole call), or None. ``field_types`` empty: any type."""
    many = len(items) > 1
    for n, item in enumerate(items, 1):
        where = f"request {n} of {len(items)}: " if many else ""
        if input_type == "plain":
            if not isinstance(item, str):
                return f"{where}a plain deployment takes a string as input"
            continue
        if not isinstance(item, dict):
            return f"{where}a structured deployment takes a JSON object of input fields"
        missing = [f for f in fields if f not in item]
        if missing:
            return f"{where}missing input field(s): {', '.join(missing)}"
        for name, kind in zip(fields, field_types, strict=False):
            if not FIELD_TYPES[kind](item[name]):
                return f"{where}input field {name!r} must be of type {kind}, got {_json_type(item[name])}"
    return None
