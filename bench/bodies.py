"""Request bodies of a big data set, encoded on first use, a block at a time, straight from Arrow columns.

Why: a 1 M-row data set sent one row per request is 1 M bodies (~330 MB of pandas-records JSON for 29 floats a
row). Building them all as Python rows first (a dict and 29 floats per row) took 49 s and 9.5 GB here; building
them all at all makes memory proportional to the data set, not to what a run sends. So ``LazyBodies`` knows every
body's row count up front (engines need it per request) and encodes a body — with the ``BLOCK`` bodies around
it — when it is first asked for; an encoded body is kept, so each body is encoded once per run.

pandas-records is encoded per column from numpy (orjson with OPT_SERIALIZE_NUMPY: float32 as the shortest
decimal that reads back to the same float32) and spliced into rows with bytes operations; no Python object per
value. Columns that cannot take that path (nulls, strings, ragged or nested lists) use ``records_from_table``
for their block, which gives the same bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, Generic, Protocol, TypeVar, overload

import orjson
import pyarrow as pa

from bench.results import PreparedBody

__all__ = ["BLOCK", "LazyBodies", "Progress", "Rows", "encode_records_block", "records_encoder", "vectorisable"]

BLOCK = 256  # bodies encoded together: one block costs well under a millisecond of loop time at one row a body
_NUMPY = orjson.OPT_SERIALIZE_NUMPY
_SCALARS = (pa.types.is_float32, pa.types.is_float64, pa.types.is_integer, pa.types.is_boolean)

Progress = Callable[[int, int], None]  # (rows prepared, rows in all) — the caller shows it, the library never prints


class Rows(Protocol):
    """What ``LazyBodies`` cuts blocks from: an Arrow table, or any rows that slice like one (KServe's tensors)."""

    @property
    def num_rows(self) -> int: ...

    def slice(self, offset: int = 0, length: int | None = None) -> Any: ...


T = TypeVar("T", bound=Rows)


def _scalar_ok(typ: pa.DataType) -> bool:
    return any(test(typ) for test in _SCALARS)


def vectorisable(table: pa.Table) -> bool:
    """Every column is a null-free numeric scalar or a null-free fixed-size list of them."""
    for col in table.columns:
        typ = col.type
        if col.null_count:
            return False
        if pa.types.is_fixed_size_list(typ):
            if not _scalar_ok(typ.value_type) or any(chunk.flatten().null_count for chunk in col.chunks):
                return False
        elif not _scalar_ok(typ):
            return False
    return True


def _column_fragments(col: pa.ChunkedArray) -> list[bytes]:
    """One JSON value per row of a vectorisable column, split out of a single orjson dump."""
    typ = col.type
    arr = col.combine_chunks()
    if pa.types.is_fixed_size_list(typ):
        width = typ.list_size
        values = arr.flatten().to_numpy(zero_copy_only=False)
        dumped = orjson.dumps(values.reshape(len(arr), width), option=_NUMPY)
        inner = dumped[2:-2]  # strip "[[" and "]]"
        return [b"[" + f + b"]" for f in inner.split(b"],[")]
    dumped = orjson.dumps(arr.to_numpy(zero_copy_only=False), option=_NUMPY)
    return dumped[1:-1].split(b",")


def encode_records_block(table: pa.Table, rows_per_body: int) -> list[bytes]:
    """pandas-records bodies of ``rows_per_body`` rows (the last may be shorter) for a vectorisable ``table``."""
    n = table.num_rows
    names = [orjson.dumps(name) for name in table.column_names]
    if len(names) == 1 and pa.types.is_fixed_size_list(table.column(0).type):
        # the common case (one tensor column): splice rows out of one dump, no per-row objects
        col = table.column(0)
        width = col.type.list_size
        values = col.combine_chunks().flatten().to_numpy(zero_copy_only=False).reshape(n, width)
        open_, sep = b'[{' + names[0] + b':', b']},{' + names[0] + b':['
        out = []
        for s in range(0, n, rows_per_body):
            dumped = orjson.dumps(values[s:s + rows_per_body], option=_NUMPY)
            out.append(open_ + dumped[1:-1].replace(b"],[", sep) + b"}]")
        return out
    frags = [_column_fragments(table.column(i)) for i in range(len(names))]
    keys = [b"{" + names[0] + b":"] + [b"," + k + b":" for k in names[1:]]
    rows: list[bytes] = []
    for values in zip(*frags, strict=True):
        parts: list[bytes] = []
        for key, value in zip(keys, values, strict=True):
            parts.append(key)
            parts.append(value)
        parts.append(b"}")
        rows.append(b"".join(parts))
    return [b"[" + b",".join(rows[s:s + rows_per_body]) + b"]" for s in range(0, n, rows_per_body)]


class LazyBodies(Sequence[PreparedBody], Generic[T]):
    """The bodies of ``table`` cut into ``rows_per_body``-row requests; each encoded when first asked for.

    ``encode(part)`` turns a table slice (``table.slice``: an Arrow table's, or any ``Rows``) into its bodies
    (``rows_per_body`` rows each). ``rows`` (per body) is known without encoding. ``body(i)`` is the cheap
    accessor; indexing builds a ``PreparedBody``.
    """

    def __init__(self, table: T, rows_per_body: int, encode: Callable[[T], list[bytes]],
                 block: int = BLOCK) -> None:
        self._table = table
        self._per = rows_per_body
        self._encode = encode
        self._block = max(1, block)
        n = (table.num_rows + rows_per_body - 1) // rows_per_body
        self._n: int = n
        last = table.num_rows - (n - 1) * rows_per_body
        self.rows: list[int] = [rows_per_body] * (n - 1) + [last] if n else []
        self._cache: list[bytes | None] = [None] * n
        self.encoded = 0  # bodies encoded so far (tests, diagnostics)

    def __len__(self) -> int:
        return self._n

    @overload
    def __getitem__(self, i: int) -> PreparedBody: ...

    @overload
    def __getitem__(self, i: slice) -> Sequence[PreparedBody]: ...

    def __getitem__(self, i: int | slice) -> PreparedBody | Sequence[PreparedBody]:
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(self._n))]
        k: int = i + self._n if i < 0 else i
        if not 0 <= k < self._n:
            raise IndexError(i)
        return PreparedBody(self.body(k), self.rows[k])

    def __iter__(self) -> Iterator[PreparedBody]:
        for i in range(self._n):
            yield self[i]

    def body(self, i: int) -> bytes:
        """Body ``i`` (encoding its block on first use)."""
        got = self._cache[i]
        if got is None:
            self._fill(i - i % self._block)
            got = self._cache[i]
            assert got is not None
        return got

    def prepare(self, upto: int, progress: Progress | None = None) -> None:
        """Encode bodies ``0 .. upto-1`` now (e.g. the first block, to fail before the run on bad data)."""
        total_rows = self._table.num_rows
        for start in range(0, min(upto, self._n), self._block):
            if self._cache[start] is None:
                self._fill(start)
            if progress is not None:
                progress(min(total_rows, (start + self._block) * self._per), total_rows)

    def _fill(self, start: int) -> None:
        stop = min(self._n, start + self._block)
        part = self._table.slice(start * self._per, (stop - start) * self._per)
        bodies = self._encode(part)
        if len(bodies) != stop - start:
            raise AssertionError(f"encoder gave {len(bodies)} bodies for {stop - start}")
        self._cache[start:stop] = bodies
        self.encoded += stop - start


def records_encoder(table: pa.Table, rows_per_body: int) -> Callable[[pa.Table], list[bytes]]:
    """The block encoder for pandas-records: vectorised when the table allows it, else via Python rows."""
    if vectorisable(table):
        return lambda part: encode_records_block(part, rows_per_body)
    from bench.data import records_from_table

    def slow(part: pa.Table) -> list[bytes]:
        records = records_from_table(part)
        return [orjson.dumps(records[s:s + rows_per_body]) for s in range(0, len(records), rows_per_body)]

    return slow
