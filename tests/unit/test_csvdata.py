"""bench.csvdata through bench.data.read_dataset: a CSV of feature columns is packed into one float tensor, and
a cell that is not a number is one InputError naming the file, the column and the row a spreadsheet shows."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from bench.data import read_dataset
from bench.errors import InputError

# cells pyarrow reads as null, true/false or a number are not "text"
_NOT_TEXT = {"na", "nan", "null", "n/a", "true", "false", "inf", "infinity"}
_NUMBERISH = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|0[xX][0-9a-fA-F]+")
texts = st.from_regex(r"[A-Za-z][A-Za-z0-9_.-]{0,10}", fullmatch=True).filter(
    lambda s: s.lower() not in _NOT_TEXT and not _NUMBERISH.fullmatch(s))
numbers = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False) | st.integers(-10**6, 10**6)
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _write(path: Path, cells: list[list[str]]) -> None:
    width = len(cells[0])
    path.write_text(",".join(f"c{j}" for j in range(width)) + "\n" + "".join(",".join(r) + "\n" for r in cells))


@FAST
@given(rows=st.lists(st.lists(numbers, min_size=3, max_size=3), min_size=1, max_size=25), width=st.integers(1, 3))
def test_numeric_columns_are_packed_in_order(tmp_path: Path, rows: list[list[float]], width: int) -> None:
    values = [r[:width] for r in rows]
    _write(tmp_path / "d.csv", [[repr(v) for v in r] for r in values])
    table = read_dataset(tmp_path / "d.csv")
    assert table.column_names == ["tensor"]
    got = np.array(table.column("tensor").to_pylist(), dtype=np.float32)
    np.testing.assert_array_equal(got, np.array(values, dtype=np.float64).astype(np.float32))


@FAST
@given(data=st.data(), n=st.integers(1, 25), width=st.integers(1, 4), text=texts | st.just(""))
def test_the_first_bad_cell_is_named_by_column_and_spreadsheet_row(tmp_path: Path, data: st.DataObject, n: int,
                                                                   width: int, text: str) -> None:
    if text == "":
        assume(width >= 2 and n >= 2)  # an empty 1-column line is a blank line (no row); one empty cell: no numbers
    assume(n >= 2 or width >= 2)  # a file of one text cell has no numbers at all: the reader says so (no row)
    cells = [[repr(data.draw(numbers)) for _ in range(width)] for _ in range(n)]
    row, col = data.draw(st.integers(0, n - 1)), data.draw(st.integers(0, width - 1))
    cells[row][col] = text
    if n >= 3 and row + 1 < n and data.draw(st.booleans()):  # a later bad cell in the column is not the first
        # (n >= 3: the column keeps a number, so an empty cell is a bad cell, not a blank in a text column)
        cells[data.draw(st.integers(row + 1, n - 1))][col] = "later"
    path = tmp_path / "d.csv"
    _write(path, cells)
    with pytest.raises(InputError) as info:
        read_dataset(path)
    message = str(info.value)
    assert message.startswith(f"{path}: column 'c{col}', row {row + 2} (header = row 1): "), message
    assert (repr(text) if text else "empty cell") in message and "\n" not in message


@pytest.mark.parametrize(("text", "column", "words"), [
    ("a,b\n1,2\n3,x\n", "b", ("row 3", "'x' is not a number", "other cells are")),  # the audit's file
    ("id,a\nalice,1\nbob,2\n", "id", ("row 2", "'alice'", "the column is text")),
    ("a,b\n1,true\n3,false\n", "b", ("row 2", "true/false")),
    ("a,b\n1,2024-01-01\n3,2024-01-02\n", "b", ("row 2", "'2024-01-01'", "date32")),
    ("a,b\n1,\n3,\n", "b", ("every cell is empty",)),
    ("a,b\n1,2\n3,NA\n", "b", ("row 3", "empty cell")),
])
def test_a_column_that_is_not_numbers_is_refused_not_dropped(tmp_path: Path, text: str, column: str,
                                                             words: tuple[str, ...]) -> None:
    (tmp_path / "d.csv").write_text(text)
    with pytest.raises(InputError) as info:
        read_dataset(tmp_path / "d.csv")
    assert f"column {column!r}" in str(info.value) and info.value.file == str(tmp_path / "d.csv")
    for word in words:
        assert word in str(info.value)


def test_blanks_around_numbers_and_hex_are_numbers(tmp_path: Path) -> None:
    (tmp_path / "d.csv").write_text("a,b\n1, 2\n0x10,4\n")
    assert read_dataset(tmp_path / "d.csv").column("tensor").to_pylist() == [[1.0, 2.0], [16.0, 4.0]]


def test_a_named_tensor_column_keeps_the_other_columns_as_they_are(tmp_path: Path) -> None:
    """With the tensor column present nothing is packed: text columns go to the target as text."""
    (tmp_path / "d.csv").write_text('tensor,id\n"[1, 2]",alice\n"[3, 4]",bob\n')
    table = read_dataset(tmp_path / "d.csv")
    assert table.column("id").to_pylist() == ["alice", "bob"]
