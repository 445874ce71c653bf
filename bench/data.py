"""Datasets: read rows from the formats users bring, and generate the synthetic ccfraud set.

Every reader returns a ``pyarrow.Table`` that holds ``column``. A flat numeric list column is normalised to
float32 (``fixed_size_list<float32>[n]`` with Wallaroo's ``tensor_type`` field metadata when every row has the
same length), because that is what the platforms' models take and what keeps encoded bodies compact. Problems
become ``InputError`` naming the file, the key and the problem, so the CLI prints one line.
"""

from __future__ import annotations

import json
from itertools import pairwise
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa

from bench.csvdata import feature_matrix
from bench.datacheck import check_names
from bench.errors import InputError
from bench.inpath import input_file

__all__ = ["CCFRAUD_FEATURES", "generate_ccfraud", "read_dataset", "records_from_table", "write_dataset"]

CCFRAUD_FEATURES = 29
_FILE_MAGIC = b"ARROW1"
_FEATHER_V1_MAGIC = b"FEA1"
_JSON_SUFFIXES = (".df.json", ".json")
_FILE_SUFFIXES = (".arrow", ".feather", ".ipc")
_STREAM_SUFFIXES = (".arrows", ".stream")


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in (*_JSON_SUFFIXES, *_FILE_SUFFIXES, *_STREAM_SUFFIXES, ".parquet", ".csv"):
        if name.endswith(suffix):
            return suffix
    return path.suffix.lower()


def read_dataset(path: str | Path, column: str = "tensor") -> pa.Table:
    """Read a dataset by extension (Arrow files are told apart from streams by their magic bytes)."""
    p = input_file(path)  # a FIFO or a device would be read forever
    file = str(p)
    suffix = _suffix(p)
    try:
        if suffix in _JSON_SUFFIXES:
            table = _read_records_json(p.read_bytes(), file)
        elif suffix in _FILE_SUFFIXES or suffix in _STREAM_SUFFIXES:
            table = _read_arrow(p.read_bytes())
        elif suffix == ".parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(p)
        elif suffix == ".csv":
            table = _read_csv(p, column, file)
        else:
            raise InputError(f"unknown data file extension {suffix or '(none)'!r}; expected .df.json, .json, "
                             ".arrow, .feather, .arrows, .stream, .parquet or .csv", file=file)
    except InputError:
        raise
    except (pa.ArrowException, ValueError, OSError) as exc:
        raise InputError(f"cannot decode {suffix} data: {_first_line(exc)}", file=file) from None
    check_names(table, file)
    return _normalise(table, column, file)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _read_records_json(raw: bytes, file: str) -> pa.Table:
    try:
        rows = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InputError(f"not valid JSON: {exc}", file=file) from None
    if not isinstance(rows, list):
        raise InputError("expected pandas-records JSON (an array of row objects), got "
                         f"a JSON {type(rows).__name__}", file=file)
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise InputError(f"row {i} is a JSON {type(row).__name__}, expected an object", file=file)
    if not rows:
        raise InputError("no rows", file=file)
    return pa.Table.from_pylist(rows)


def _read_arrow(raw: bytes) -> pa.Table:
    import pyarrow.ipc as ipc

    buf = pa.py_buffer(raw)
    if raw[:6] == _FILE_MAGIC:
        return ipc.open_file(buf).read_all()
    if raw[:4] == _FEATHER_V1_MAGIC:
        import pyarrow.feather as feather

        return feather.read_table(pa.BufferReader(buf))
    return ipc.open_stream(buf).read_all()


def _read_csv(p: Path, column: str, file: str) -> pa.Table:
    """A CSV holds either ``column`` as JSON-array strings (its other columns kept as they are), or numeric features
    packed into ``column`` (every column must be numbers: bench.csvdata)."""
    import pyarrow.csv as csv

    table = csv.read_csv(p)
    if column in table.column_names:
        col = table.column(column)
        if not pa.types.is_string(col.type) and not pa.types.is_large_string(col.type):
            return table
        try:
            values = [None if v is None else json.loads(v) for v in col.to_pylist()]
            arr = pa.array(values)
        except (ValueError, pa.ArrowException) as exc:
            raise InputError(f"values are not JSON arrays: {_first_line(exc)}", file=file, key=column) from None
        return table.set_column(table.column_names.index(column), column, arr)
    return pa.table({column: _fixed_list(feature_matrix(table, column, file))})


def _has_nan(values: np.ndarray, step: int = 1 << 20) -> bool:
    """``np.isnan(values).any()`` in slices: no temporary as big as the data set."""
    return any(bool(np.isnan(values[i:i + step]).any()) for i in range(0, values.size, step))


def _fixed_list(matrix: np.ndarray) -> pa.FixedSizeListArray:
    flat = pa.array(np.ascontiguousarray(matrix, dtype=np.float32).reshape(-1), type=pa.float32())
    return pa.FixedSizeListArray.from_arrays(flat, matrix.shape[1])


def _tensor_field(name: str, width: int) -> pa.Field:
    meta = {b"tensor_type": json.dumps({"shape": [width]}, separators=(",", ":")).encode()}
    return pa.field(name, pa.list_(pa.float32(), width), metadata=meta)


def _normalise(table: pa.Table, column: str, file: str) -> pa.Table:
    if column not in table.column_names:
        raise InputError(f"no column {column!r} (columns: {', '.join(table.column_names) or 'none'})",
                         file=file, key=column)
    if table.num_rows == 0:
        raise InputError("no rows", file=file)
    col = table.column(column)
    typ = col.type
    is_list = pa.types.is_list(typ) or pa.types.is_large_list(typ) or pa.types.is_fixed_size_list(typ)
    if not is_list:
        return table
    value_type = typ.value_type
    if not (pa.types.is_floating(value_type) or pa.types.is_integer(value_type)):
        return table  # nested tensors or strings: passed through untouched
    arr = col.combine_chunks()
    index = table.column_names.index(column)
    if arr.null_count == 0:
        if pa.types.is_fixed_size_list(typ):
            width, uniform = typ.list_size, True
        else:
            lengths = arr.value_lengths().to_numpy()
            width = int(lengths[0])
            uniform = bool((lengths == width).all())
        if uniform:
            # no copy when the values are float32 already (a big Arrow file stays the only copy)
            values = np.asarray(arr.flatten().to_numpy(zero_copy_only=False), dtype=np.float32)
            if values.size == len(arr) * width and width > 0 and not _has_nan(values):
                fixed = _fixed_list(values.reshape(len(arr), width))
                return table.set_column(index, _tensor_field(column, width), fixed)
    # unsafe: an integer float32 cannot hold exactly (above 2**24) rounds to the nearest one, as the uniform path's
    # numpy conversion does, instead of raising ArrowInvalid (hypothesis: [None, 16777217])
    return table.set_column(index, column, arr.cast(pa.list_(pa.float32()), safe=False))


def records_from_table(table: pa.Table) -> list[dict[str, object]]:
    """Rows as dicts of plain Python values; float32 values become the shortest decimal that reads back
    to the same float32 (so JSON stays compact: ``-1.0603298``, not ``-1.060329794883728``)."""
    names = table.column_names
    columns = [_column_values(table.column(n)) for n in names]
    return [dict(zip(names, values, strict=True)) for values in zip(*columns, strict=True)]


def _column_values(col: pa.ChunkedArray) -> list[object]:
    typ = col.type
    if col.null_count == 0:
        if pa.types.is_float32(typ):
            return _short_floats(col.to_numpy())
        is_list = pa.types.is_list(typ) or pa.types.is_large_list(typ) or pa.types.is_fixed_size_list(typ)
        if is_list and pa.types.is_float32(typ.value_type):
            arr = col.combine_chunks()
            flat = arr.flatten()
            if flat.null_count == 0:
                values = _short_floats(flat.to_numpy())
                if pa.types.is_fixed_size_list(typ):
                    w = typ.list_size
                    return [values[i:i + w] for i in range(0, len(values), w)]
                offsets = arr.offsets.to_numpy()
                bounds = (offsets - offsets[0]).tolist()  # flatten() starts at the first row's values
                return [values[a:b] for a, b in pairwise(bounds)]
    result: list[object] = col.to_pylist()
    return result


def _short_floats(values: np.ndarray) -> list[object]:
    """float32 values as Python floats with the shortest float32 decimal (orjson writes float32 that way)."""
    out: list[object] = orjson.loads(orjson.dumps(values, option=orjson.OPT_SERIALIZE_NUMPY))
    return out


def generate_ccfraud(rows: int, seed: int) -> pa.Table:
    """A synthetic stand-in for the tutorials' credit-card set (targets.md §4), reproducible from ``seed``.

    Features are skewed Student-t draws (df=3: heavy tails), standardised per feature to mean 0 and std 1 and
    clipped to the real set's range (−32..+49). About 0.2 % of rows (at least one from 250 rows up) are
    fraud-like: a fixed per-feature shift of several standard deviations, as PCA features of real fraud show.
    """
    if rows < 1:
        raise InputError("must be at least 1", key="rows")
    rng = np.random.default_rng(seed)
    n = CCFRAUD_FEATURES
    x = np.clip(rng.standard_t(3.0, size=(rows, n)), -20.0, 20.0)  # keeps the final range clip rare
    skew = rng.uniform(0.7, 1.5, size=n)  # longer positive or negative tails per feature
    x = np.where(x > 0, x * skew, x / skew)
    n_fraud = (rows + 250) // 500  # 0.2 %, rounded half up
    if n_fraud:
        shift = rng.choice([-1.0, 1.0], size=n) * rng.uniform(1.0, 8.0, size=n)
        fraud_rows = rng.choice(rows, size=n_fraud, replace=False)
        x[fraud_rows] += shift + rng.normal(0.0, 2.0, size=(n_fraud, n))
    mean = x.mean(axis=0)
    std = x.std(axis=0)
    std[std == 0] = 1.0
    x = np.clip((x - mean) / std, -32.0, 49.0)
    return pa.Table.from_arrays([_fixed_list(x.astype(np.float32))], schema=pa.schema([_tensor_field("tensor", n)]))


def write_dataset(table: pa.Table, path: str | Path) -> None:
    """Write by extension: .df.json/.json (compact pandas-records), .arrow/.feather (IPC file),
    .arrows (IPC stream), .parquet."""
    p = Path(path)
    suffix = _suffix(p)
    if suffix in _JSON_SUFFIXES:
        data = orjson.dumps(records_from_table(table))
    elif suffix in _FILE_SUFFIXES or suffix in _STREAM_SUFFIXES:
        import pyarrow.ipc as ipc

        sink = pa.BufferOutputStream()
        opener = ipc.new_file if suffix in _FILE_SUFFIXES else ipc.new_stream
        with opener(sink, table.schema) as writer:
            writer.write_table(table)
        data = sink.getvalue().to_pybytes()
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            pq.write_table(table, p)
        except OSError as exc:
            raise InputError(f"cannot write: {_first_line(exc)}", file=str(p)) from None
        return
    else:
        raise InputError(f"unknown output extension {suffix or '(none)'!r}; expected .df.json, .json, .arrow, "
                         ".feather, .arrows or .parquet", file=str(p))
    try:
        p.write_bytes(data)
    except OSError as exc:
        raise InputError(f"cannot write: {exc.strerror or _first_line(exc)}", file=str(p)) from None
