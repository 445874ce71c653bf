"""The UbiOps emulator's input check: what the platform refuses at create, before anything is created."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.emulator.ubiops_input import FIELD_TYPES, input_problem

ROW = {"tensor": [0.5] * 29}


@pytest.mark.parametrize(("items", "words"), [
    ([{"wrong": 1}], "missing input field(s): tensor"),
    ([{"tensor": "abc"}], "'tensor' must be of type array_double, got string"),
    ([{"tensor": [1, 2, "3"]}], "array_double, got array"),
    ([{"tensor": [True]}], "array_double"),  # a JSON true is not a number
    ([{"tensor": None}], "got null"),
    ([ROW, ROW, {"x": 1}], "request 3 of 3: missing"),
    (["text"], "JSON object of input fields"),
])
def test_faulty_structured_inputs_are_named(items: list[Any], words: str) -> None:
    problem = input_problem("structured", ("tensor",), ("array_double",), items)
    assert problem is not None and words in problem


def test_good_inputs_pass_and_untyped_fields_take_any_value() -> None:
    assert input_problem("structured", ("tensor",), ("array_double",), [ROW, {"tensor": [1, 2.5], "extra": 1}]) \
        is None
    assert input_problem("structured", ("tensor",), (), [{"tensor": "anything"}]) is None
    assert input_problem("structured", ("a", "b"), ("int", "string"), [{"a": 1, "b": "x"}]) is None
    assert input_problem("structured", ("a",), ("int",), [{"a": 1.5}]) is not None
    assert input_problem("plain", (), (), ["a", "b"]) is None
    assert "plain deployment" in (input_problem("plain", (), (), ["a", {"b": 1}]) or "")


@given(st.lists(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(),
                          st.lists(st.floats(allow_nan=False), max_size=3)), max_size=5),
       st.sampled_from(sorted(FIELD_TYPES)))
def test_a_problem_names_the_first_faulty_item(values: list[Any], kind: str) -> None:
    items = [{"f": v} for v in values]
    problem = input_problem("structured", ("f",), (kind,), items)
    faulty = [n for n, v in enumerate(values, 1) if not FIELD_TYPES[kind](v)]
    assert (problem is None) == (not faulty)
    if faulty and len(items) > 1:
        assert problem is not None and problem.startswith(f"request {faulty[0]} of {len(items)}:")
