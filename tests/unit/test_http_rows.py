"""counted_rows: the rows an ad hoc body sends, for the formats bench reads; None (not guessed) otherwise."""

from __future__ import annotations

import io

import orjson
import pyarrow as pa
import pyarrow.ipc as ipc
from hypothesis import given
from hypothesis import strategies as st

from bench.targets.http import counted_rows

NROWS = st.integers(min_value=0, max_value=300)


@given(NROWS)
def test_pandas_records_and_values(n: int) -> None:
    assert counted_rows(orjson.dumps([{"a": i, "b": 0.5} for i in range(n)])) == n
    assert counted_rows(b"  " + orjson.dumps([[i, 0.5] for i in range(n)])) == n


@given(NROWS)
def test_pandas_split_and_open_inference_protocol(n: int) -> None:
    assert counted_rows(orjson.dumps({"columns": ["a"], "index": list(range(n)), "data": [[i] for i in range(n)]})) == n
    v2 = {"inputs": [{"name": "x", "shape": [n, 3], "datatype": "FP32", "data": [0.0] * (3 * n)}]}
    assert counted_rows(orjson.dumps(v2)) == n


@given(NROWS, st.booleans())
def test_arrow_ipc_file_and_stream(n: int, as_file: bool) -> None:
    table = pa.table({"a": list(range(n))})
    sink = io.BytesIO()
    writer = ipc.new_file(sink, table.schema) if as_file else ipc.new_stream(sink, table.schema)
    with writer:
        writer.write_table(table)
    assert counted_rows(sink.getvalue()) == n


@given(st.binary(max_size=64))
def test_anything_else_is_unknown_or_a_real_count(body: bytes) -> None:
    rows = counted_rows(body)
    assert rows is None or rows >= 0  # never raises; a count only for what parsed as a known shape


def test_unknown_shapes() -> None:
    assert counted_rows(b'{"instances": [1, 2]}') is None  # a JSON object of another shape
    assert counted_rows(b'{"data": [1, 2]}') is None  # "data" without "columns" is not pandas split
    assert counted_rows(b"[1, 2") is None  # broken JSON
    assert counted_rows(b"ARROW1 but not Arrow") is None
    assert counted_rows(b"\x08\x96\x01 protobuf") is None
