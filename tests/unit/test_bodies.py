"""bench.bodies: the vectorised pandas-records encoder gives the old encoder's bytes; bodies are encoded lazily."""

from __future__ import annotations

import numpy as np
import orjson
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.bodies import BLOCK, LazyBodies, encode_records_block, records_encoder, vectorisable
from bench.data import generate_ccfraud, records_from_table
from bench.engine.base import EngineConfig, RequestSet
from bench.engine.fast import FastEngine
from bench.payload import build_bodies


def old_bodies(table: pa.Table, per: int) -> list[bytes]:
    """The encoder before bench.bodies: Python rows, then orjson per body."""
    records = records_from_table(table)
    return [orjson.dumps(records[s:s + per]) for s in range(0, len(records), per)]


_TYPES = {"f32": np.float32, "f64": np.float64, "i64": np.int64, "i8": np.int8, "u32": np.uint32, "bool": np.bool_}


@st.composite
def columns(draw: st.DrawFn, rows: int) -> pa.Array:
    kind = draw(st.sampled_from(sorted(_TYPES)))
    width = draw(st.one_of(st.none(), st.integers(1, 5)))
    n = rows * (width if width is not None else 1)
    if kind == "bool":
        values = np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)), dtype=np.bool_)
    elif kind.startswith("f"):
        floats = st.floats(width=32 if kind == "f32" else 64, allow_nan=True, allow_infinity=True)
        values = np.array(draw(st.lists(floats, min_size=n, max_size=n)), dtype=_TYPES[kind])
    else:
        info = np.iinfo(_TYPES[kind])
        ints = st.integers(int(info.min), int(info.max))
        values = np.array(draw(st.lists(ints, min_size=n, max_size=n)), dtype=_TYPES[kind])
    flat = pa.array(values)
    return flat if width is None else pa.FixedSizeListArray.from_arrays(flat, width)


@st.composite
def tables(draw: st.DrawFn) -> pa.Table:
    rows = draw(st.integers(1, 30))
    ncols = draw(st.integers(1, 3))
    names = draw(st.lists(st.text(min_size=1, max_size=6), min_size=ncols, max_size=ncols, unique=True))
    return pa.table({name: draw(columns(rows)) for name in names})


@settings(max_examples=150, deadline=None)
@given(table=tables(), per=st.integers(1, 12))
def test_vectorised_encoder_gives_the_old_bodies(table: pa.Table, per: int) -> None:
    """Byte-identical, except that float32 values past orjson's float32 exponent threshold are written in
    exponent form (1e+13, not 10000000000000.0): the same decimal, so the same JSON value."""
    assert vectorisable(table)
    new, old = encode_records_block(table, per), old_bodies(table, per)
    assert [orjson.loads(b) for b in new] == [orjson.loads(b) for b in old]
    if not any(pa.types.is_float32(t) or getattr(t, "value_type", None) == pa.float32() for t in table.schema.types):
        assert new == old


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 700), per=st.integers(1, 9), block=st.integers(1, 64), seed=st.integers(0, 9))
def test_lazy_bodies_equal_the_old_ones_in_any_access_order(rows: int, per: int, block: int, seed: int) -> None:
    table = generate_ccfraud(rows, seed)
    lazy = LazyBodies(table, per, records_encoder(table, per), block=block)
    want = old_bodies(table, per)
    assert len(lazy) == len(want)
    assert lazy.rows == [min(per, rows - s) for s in range(0, rows, per)]
    order = np.random.default_rng(seed).permutation(len(want))
    got = {int(i): lazy.body(int(i)) for i in order}
    assert [orjson.loads(got[i]) for i in range(len(want))] == [orjson.loads(w) for w in want]
    assert [b.body for b in lazy] == [got[i] for i in range(len(want))] and lazy[-1].body == got[len(want) - 1]


def test_not_vectorisable_columns_fall_back_to_the_old_encoder() -> None:
    table = pa.table({"s": ["a", None, "c"], "x": pa.array([[1.0], [2.0, 3.0], []], pa.list_(pa.float32()))})
    assert not vectorisable(table)
    lazy = LazyBodies(table, 2, records_encoder(table, 2))
    assert [b.body for b in lazy] == old_bodies(table, 2)  # the fallback is the old encoder itself


def test_build_bodies_encodes_only_the_first_block_and_reports_progress() -> None:
    table = generate_ccfraud(5 * BLOCK + 3, 1)
    seen: list[tuple[int, int]] = []
    bodies = build_bodies(table, 1, "pandas-records", progress=lambda done, total: seen.append((done, total)))
    assert isinstance(bodies, LazyBodies)
    assert bodies.encoded == BLOCK
    assert seen and seen[-1][1] == table.num_rows
    # an engine takes the row counts and builds nothing up front
    eng = FastEngine(EngineConfig(), RequestSet("http://127.0.0.1:9/", "POST", {}, bodies),
                     lambda s, b, r: (0, r, 0), None)  # type: ignore[arg-type]
    assert eng._rows == bodies.rows and bodies.encoded == BLOCK
    assert eng._wire(3 * BLOCK + 1).endswith(bodies.body(3 * BLOCK + 1))
    assert bodies.encoded == 2 * BLOCK
