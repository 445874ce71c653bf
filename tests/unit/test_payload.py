"""bench.payload: slicing, one-time encoding, and round trips through pyarrow/orjson."""

from __future__ import annotations

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.ipc as ipc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.data import generate_ccfraud
from bench.errors import InputError
from bench.payload import (
    build_bodies,
    decode_arrow_file,
    decode_pandas_records,
    encode_arrow_file,
    rows_as_records,
)


def _table(matrix: np.ndarray) -> pa.Table:
    flat = pa.array(matrix.astype(np.float32).reshape(-1), pa.float32())
    return pa.table({"tensor": pa.FixedSizeListArray.from_arrays(flat, matrix.shape[1])})


floats32 = st.floats(width=32, allow_nan=False, allow_infinity=False)


@st.composite
def tables(draw: st.DrawFn) -> pa.Table:
    rows = draw(st.integers(1, 40))
    width = draw(st.integers(1, 6))
    values = draw(st.lists(floats32, min_size=rows * width, max_size=rows * width))
    return _table(np.array(values, dtype=np.float32).reshape(rows, width))


def _matrix(table: pa.Table) -> np.ndarray:
    arr = table.column("tensor").combine_chunks()
    return np.asarray(arr.flatten().to_numpy(), dtype=np.float32).reshape(len(arr), -1)


@settings(max_examples=60, deadline=None)
@given(table=tables(), per=st.integers(1, 50))
def test_pandas_records_round_trip(table: pa.Table, per: int) -> None:
    bodies = build_bodies(table, per, "pandas-records")
    assert [b.rows for b in bodies] == [min(per, table.num_rows - s) for s in range(0, table.num_rows, per)]
    rows = [r for b in bodies for r in decode_pandas_records(b.body)]
    assert len(rows) == table.num_rows
    back = np.array([r["tensor"] for r in rows], dtype=np.float32)
    np.testing.assert_array_equal(back, _matrix(table))  # shortest float32 decimals read back exactly


@settings(max_examples=40, deadline=None)
@given(table=tables(), per=st.integers(1, 50))
def test_arrow_round_trip(table: pa.Table, per: int) -> None:
    bodies = build_bodies(table, per, "arrow")
    parts = [decode_arrow_file(b.body) for b in bodies]
    assert [p.num_rows for p in parts] == [b.rows for b in bodies]
    assert sum(b.rows for b in bodies) == table.num_rows
    np.testing.assert_array_equal(np.concatenate([_matrix(p) for p in parts]), _matrix(table))


def test_last_partial_chunk_kept_and_sizes() -> None:
    table = generate_ccfraud(25, 1)
    bodies = build_bodies(table, 10, "pandas-records")
    assert [b.rows for b in bodies] == [10, 10, 5]
    assert build_bodies(table, 100, "arrow")[0].rows == 25  # more per request than rows: one body


def test_pandas_records_is_compact_json_numbers() -> None:
    body = build_bodies(generate_ccfraud(20, 1), 20, "pandas-records")[0].body
    assert body.startswith(b'[{"tensor":[') and b" " not in body and b"\n" not in body
    assert all(isinstance(v, float) for v in orjson.loads(body)[0]["tensor"])
    assert 250 < len(body) / 20 < 600  # about the size of the tutorials' one-row request


def test_arrow_body_is_ipc_file_with_tensor_metadata() -> None:
    body = build_bodies(generate_ccfraud(3, 1), 3, "arrow")[0].body
    assert body[:6] == b"ARROW1" and body[-6:] == b"ARROW1"
    reader = ipc.open_file(pa.py_buffer(body))
    assert reader.num_record_batches == 1
    field = reader.schema.field("tensor")
    assert field.type == pa.list_(pa.float32(), 29) and field.metadata[b"tensor_type"] == b'{"shape":[29]}'


def test_other_columns_are_encoded_too() -> None:
    table = pa.table({"tensor": pa.array([[1.0], [2.0]], pa.list_(pa.float32())), "id": ["a", "b"]})
    body = build_bodies(table, 2, "pandas-records")[0].body
    assert orjson.loads(body) == [{"tensor": [1.0], "id": "a"}, {"tensor": [2.0], "id": "b"}]


@pytest.mark.parametrize(("per", "fmt", "key"), [(0, "arrow", "rows_per_request"),
                                                 (-1, "pandas-records", "rows_per_request"),
                                                 (True, "arrow", "rows_per_request"),
                                                 (1, "csv", "format")])
def test_bad_arguments(per: int, fmt: str, key: str) -> None:
    with pytest.raises(InputError) as info:
        build_bodies(generate_ccfraud(2, 1), per, fmt)  # type: ignore[arg-type]
    assert info.value.key == key


def test_rows_as_records() -> None:
    table = generate_ccfraud(5, 2)
    recs = rows_as_records(table, 1, 3)
    assert len(recs) == 2 and len(recs[0]["tensor"]) == 29  # type: ignore[arg-type]
    np.testing.assert_array_equal(np.array([r["tensor"] for r in recs], dtype=np.float32), _matrix(table)[1:3])
    assert rows_as_records(table, 4, 10) == rows_as_records(table, 4, 5)
    with pytest.raises(ValueError):
        rows_as_records(table, 3, 1)


@pytest.mark.parametrize(("body", "needle"), [(b"[{", "not valid JSON"), (b'{"a":1}', "JSON array"),
                                              (b"[1]", "row 0")])
def test_decode_pandas_records_errors(body: bytes, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        decode_pandas_records(body)


def test_decode_arrow_file_refuses_streams_and_garbage() -> None:
    table = generate_ccfraud(2, 1)
    sink = pa.BufferOutputStream()
    with ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    with pytest.raises(ValueError, match="ARROW1"):
        decode_arrow_file(sink.getvalue().to_pybytes())
    with pytest.raises(ValueError, match="readable"):
        decode_arrow_file(b"ARROW1\x00\x00" + b"\x01" * 40)
    assert decode_arrow_file(encode_arrow_file(table)).equals(table)
