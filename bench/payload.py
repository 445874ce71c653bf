"""Request bodies, encoded once before the run (the hot loop only cycles through bytes).

pandas-records is a compact JSON array of row objects (orjson; float32 values written as the shortest decimal
that reads back to the same float32). arrow is an Arrow IPC *file* (magic ``ARROW1``), which is what Wallaroo's
``application/vnd.apache.arrow.file`` means — not a stream. The decoders serve the emulator and tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import orjson
import pyarrow as pa

from bench.bodies import BLOCK, LazyBodies, Progress, records_encoder
from bench.data import records_from_table
from bench.errors import InputError
from bench.results import PreparedBody

__all__ = ["FORMATS", "PayloadFormat", "build_bodies", "decode_arrow_file", "decode_pandas_records",
           "encode_arrow_file", "rows_as_records"]

PayloadFormat = Literal["pandas-records", "arrow"]
FORMATS: tuple[PayloadFormat, ...] = ("pandas-records", "arrow")
_ARROW_MAGIC = b"ARROW1"


def build_bodies(table: pa.Table, rows_per_request: int, fmt: PayloadFormat,
                 progress: Progress | None = None) -> Sequence[PreparedBody]:
    """Slice ``table`` into requests of ``rows_per_request`` rows (the last, shorter chunk is kept).

    The bodies are a ``LazyBodies``: the first block is encoded now (bad data fails here, before any load), the
    rest when a run first sends them, so memory follows what the run sends (see ``bench.bodies``).
    ``progress(rows, total)`` is called while encoding up front.
    """
    if isinstance(rows_per_request, bool) or not isinstance(rows_per_request, int) or rows_per_request < 1:
        raise InputError(f"must be an integer >= 1, got {rows_per_request!r}", key="rows_per_request")
    if fmt not in FORMATS:
        raise InputError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}", key="format")
    if table.num_rows == 0:
        raise InputError("the dataset has no rows", key="rows_per_request")
    if fmt == "pandas-records":
        bodies = LazyBodies(table, rows_per_request, records_encoder(table, rows_per_request))
    else:
        def arrow(part: pa.Table) -> list[bytes]:
            return [encode_arrow_file(part.slice(s, rows_per_request))
                    for s in range(0, part.num_rows, rows_per_request)]

        bodies = LazyBodies(table, rows_per_request, arrow)
    bodies.prepare(BLOCK, progress)
    return bodies


def encode_arrow_file(table: pa.Table) -> bytes:
    """The whole table as one Arrow IPC file with a single record batch (schema and field metadata kept)."""
    import pyarrow.ipc as ipc

    sink = pa.BufferOutputStream()
    with ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table.combine_chunks())
    return sink.getvalue().to_pybytes()  # type: ignore[no-any-return]


def rows_as_records(table: pa.Table, start: int, stop: int) -> list[dict[str, object]]:
    """Rows ``start:stop`` as plain dicts (for targets that wrap rows in their own envelope, e.g. UbiOps)."""
    if start < 0 or stop < start:
        raise ValueError(f"bad row range {start}:{stop}")
    return records_from_table(table.slice(start, stop - start))


def decode_pandas_records(body: bytes) -> list[dict[str, object]]:
    """Parse a pandas-records body; ValueError with a short reason when it is not an array of objects."""
    try:
        rows = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"body is not valid JSON: {exc}") from None
    if not isinstance(rows, list):
        raise ValueError(f"expected a JSON array of row objects, got a JSON {type(rows).__name__}")
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ValueError(f"row {i} is a JSON {type(row).__name__}, expected an object")
    return rows


def decode_arrow_file(body: bytes) -> pa.Table:
    """Read an Arrow IPC file body; ValueError when it is not one (an IPC stream is refused, as Wallaroo does)."""
    import pyarrow.ipc as ipc

    if body[:6] != _ARROW_MAGIC:
        raise ValueError("body is not an Arrow IPC file (missing ARROW1 magic)")
    try:
        return ipc.open_file(pa.py_buffer(body)).read_all()
    except (pa.ArrowException, OSError) as exc:
        raise ValueError(f"body is not a readable Arrow IPC file: {exc}") from None
