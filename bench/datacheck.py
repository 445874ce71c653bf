"""Read-time checks of a dataset's tensor column, so bad tensors fail before the run instead of as 100 % HTTP 400s.

Kept apart from bench.data (the readers and encoders): ``check_tensors`` looks at the table a reader returned and
raises one InputError naming the file, the column and the first bad row (0-based, as in the file's row order):
a null row or value, NaN/±inf (JSON cannot carry them: they would be sent as ``null``), or ragged numeric rows
(the platforms' tensor inputs have one shape).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from bench.errors import InputError

__all__ = ["check_names", "check_tensors"]


def check_names(table: pa.Table, file: str) -> None:
    """What a damaged file can hide from the reader: column names that are not UTF-8, and offsets or lengths that
    point outside their buffers (IPC reading does not check them; using them raises or reads garbage)."""
    try:
        table.column_names  # noqa: B018 - decodes every name
    except UnicodeDecodeError:
        raise InputError("a column name is not UTF-8 text (damaged file?)", file=file) from None
    try:
        table.validate(full=True)
    except (pa.ArrowException, ValueError) as exc:
        first = str(exc).strip().splitlines()
        raise InputError(f"damaged data: {first[0] if first else type(exc).__name__}", file=file) from None


def check_tensors(table: pa.Table, column: str, file: str, *, json_body: bool = True, binary_hint: str = "") -> None:
    """Raise InputError at the first bad row of ``column``. ``json_body=False`` (Arrow bodies, KServe's binary
    tensor extension) lets NaN/inf through (a model may read NaN as "missing") and binary columns (those bodies
    carry bytes; JSON does not). ``binary_hint``: how the target could send a binary column after all."""
    if json_body:
        for name, typ in zip(table.column_names, table.schema.types, strict=True):
            if pa.types.is_binary(typ) or pa.types.is_large_binary(typ) or pa.types.is_fixed_size_binary(typ):
                raise InputError(f"a binary column (Arrow type {typ}): a JSON body cannot carry raw bytes"
                                 f"{f'; {binary_hint}' if binary_hint else ''} (text belongs in a string column)",
                                 file=file, key=name)
    if column not in table.column_names or table.num_rows == 0:
        return  # the reader has already said so
    offset, width = 0, None
    for chunk in table.column(column).chunks:  # chunk by chunk: no copy of a big data set
        width = _check_chunk(chunk, offset, width, column, file, finite=json_body)
        offset += len(chunk)


def _check_chunk(col: pa.Array, offset: int, width: int | None, column: str, file: str, *,
                 finite: bool) -> int | None:
    """Check one chunk whose first row is row ``offset``; returns the tensor width seen so far."""

    def bad(row: int, problem: str) -> InputError:
        return InputError(f"row {offset + row}: {problem}", file=file, key=column)

    if col.null_count:
        raise bad(_first(col.is_null()), "empty (null) value")
    typ = col.type
    if pa.types.is_list(typ) or pa.types.is_large_list(typ) or pa.types.is_fixed_size_list(typ):
        vt = typ.value_type
        if not (pa.types.is_floating(vt) or pa.types.is_integer(vt) or pa.types.is_null(vt)):
            return width  # nested or string tensors: their shape is the model's business
        if pa.types.is_fixed_size_list(typ):
            lengths = np.full(len(col), typ.list_size)
        else:
            lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
        if width is None and len(lengths):
            width = int(lengths[0])
        odd = np.flatnonzero(lengths != width)
        if odd.size:
            r = int(odd[0])
            raise bad(r, f"{lengths[r]} values where row 0 has {width} (ragged: every tensor must have the same "
                         "shape)")
        if width == 0:
            raise bad(0, "an empty tensor")
        values = pc.list_flatten(col)  # zero-copy for the normalised fixed-size float32 tensors

        def row_of(i: int) -> int:  # rows all have ``width`` values (checked above)
            return i // width if width else 0

        if values.null_count:
            raise bad(row_of(_first(values.is_null())), "a null value inside the tensor")
        if finite and pa.types.is_floating(values.type):
            k = _first_non_finite(values)
            if k is not None:
                raise bad(row_of(k), f"{_describe(values[k].as_py())} in the tensor (not a finite number; JSON "
                          "cannot carry it)")
    elif finite and pa.types.is_floating(typ):
        j = _first_non_finite(col)
        if j is not None:
            raise bad(j, f"{_describe(col[j].as_py())} (not a finite number; JSON cannot carry it)")
    return width


def _first(mask: pa.Array) -> int:
    return int(np.flatnonzero(mask.to_numpy(zero_copy_only=False))[0])


def _first_non_finite(values: pa.Array) -> int | None:
    arr = values.to_numpy(zero_copy_only=False)
    step = 1 << 20  # in slices: no temporary as big as the data set
    for start in range(0, arr.size, step):
        bad = np.flatnonzero(~np.isfinite(arr[start:start + step]))
        if bad.size:
            return start + int(bad[0])
    return None


def _describe(value: object) -> str:
    return "NaN" if value != value else str(value)
