"""CSV feature columns packed into one float tensor, or refused at their first bad cell.

A CSV without the tensor column is a table of numeric features, one per column (``bench.data`` packs them into
``column``). pyarrow types a column with one non-numeric cell as text, and a text column cannot go into a float
tensor: dropping it (as bench once did) changed the tensor's width, and every request was answered 400. So a
column that is not numbers is one InputError naming the file, the column and the row of the first bad cell,
counted as a spreadsheet does (the header is row 1, the first data row is row 2; blank lines are not rows).
"""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa

from bench.errors import InputError

__all__ = ["HEADER_ROWS", "feature_matrix"]

HEADER_ROWS = 1  # a data row's spreadsheet number is its 0-based index + HEADER_ROWS + 1
# what pyarrow's CSV reader reads as a number (decimal, exponent, hex, inf/nan), surrounding blanks allowed
_NUMBER = re.compile(r"\s*[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|0[xX][0-9a-fA-F]+|inf(?:inity)?|nan)\s*",
                     re.IGNORECASE)


def feature_matrix(table: pa.Table, column: str, file: str) -> np.ndarray:
    """Every column of ``table`` (as read from a CSV) as float32 features, rows × columns, or an InputError at the
    first cell that is not a number: a text cell in a column of numbers, a text/true-false/date column, or an
    empty cell."""
    names = table.column_names
    if not any(_is_number_type(t) or _looks_numeric(table.column(n)) for n, t in zip(names, table.schema.types,
                                                                                      strict=True)):
        raise InputError(f"no column {column!r} and no numeric feature columns to pack into it "
                         f"(columns: {', '.join(names) or 'none'})", file=file, key=column)
    return np.column_stack([_numbers(table.column(n), n, column, file) for n in names]).astype(np.float32)


def _is_number_type(typ: pa.DataType) -> bool:
    return bool(pa.types.is_integer(typ) or pa.types.is_floating(typ))


def _is_text_type(typ: pa.DataType) -> bool:
    return bool(pa.types.is_string(typ) or pa.types.is_large_string(typ))


def _looks_numeric(col: pa.ChunkedArray) -> bool:
    """A text column with at least one cell that is a number: a column of numbers with a bad cell."""
    return _is_text_type(col.type) and any(v is not None and _NUMBER.fullmatch(v) for v in col.to_pylist())


def _row(index: int) -> str:
    return f"row {index + HEADER_ROWS + 1}"


def _numbers(col: pa.ChunkedArray, name: str, column: str, file: str) -> np.ndarray:
    """One column's values as float64, or the InputError at its first bad cell."""

    def bad(index: int | None, problem: str) -> InputError:
        where = f"column {name!r}" + (f", {_row(index)} (header = row 1)" if index is not None else "")
        return InputError(f"{where}: {problem}; with no {column!r} column, every column is a feature packed into "
                          "one float tensor", file=file)

    typ = col.type
    if pa.types.is_null(typ):
        raise bad(None, "every cell is empty")
    if _is_number_type(typ):
        if col.null_count:
            raise bad(_first_null(col), "an empty cell (or NA, NaN, null)")
        return np.asarray(col.to_numpy(), dtype=np.float64)
    if pa.types.is_boolean(typ):
        raise bad(_first_null(col, valid=True), "true/false is not a number (write 1 or 0)")
    if not _is_text_type(typ):  # dates, times
        first = _first_null(col, valid=True)
        raise bad(first, f"{str(col[first].as_py())!r} is not a number (the column holds {typ} values)")
    nulls = _null_cells()  # a text column keeps them as text; in a column of numbers they are empty cells
    cells: list[str | None] = [None if v is None or v.strip() in nulls else v for v in col.to_pylist()]
    numeric = any(v is not None and _NUMBER.fullmatch(v) for v in cells)
    for i, v in enumerate(cells):
        if v is None:
            if numeric:
                raise bad(i, "an empty cell (or NA, NaN, null)")
            continue
        if not _NUMBER.fullmatch(v):
            what = "while the column's other cells are" if numeric else "the column is text"
            raise bad(i, f"{_shown(v)} is not a number ({what})")
    if not numeric:
        raise bad(None, "every cell is empty")
    try:  # every cell is a number pyarrow did not read as one (blanks, mixed forms): read each as one
        return np.asarray(pa.chunked_array(col.chunks).cast(pa.float64()).to_numpy(), dtype=np.float64)
    except (pa.ArrowException, ValueError):
        return np.array([float.fromhex(v) if "x" in v.lower() else float(v) for v in cells if v is not None])


def _null_cells() -> frozenset[str]:
    """The cells pyarrow's CSV reader reads as null in a column of numbers ("", NA, NaN, null, ...)."""
    import pyarrow.csv as csv

    return frozenset(csv.ConvertOptions().null_values)


def _first_null(col: pa.ChunkedArray, *, valid: bool = False) -> int:
    """The index of the first null cell (``valid``: the first non-null one)."""
    mask = (col.is_valid() if valid else col.is_null()).to_numpy(zero_copy_only=False)
    return int(np.flatnonzero(mask)[0])


def _shown(value: str, limit: int = 40) -> str:
    return repr(value if len(value) <= limit else value[:limit] + "…")
