"""bench.targets.kserve_codec / kserve: V2 bodies decode to the data (checked by the emulator's own decoder),
answers are judged by rows, the model's metadata is checked against the data, config errors name the key."""

from __future__ import annotations

import math
import struct
import warnings
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.datacheck import check_tensors
from bench.emulator.kserve import decode_request
from bench.errors import InputError
from bench.results import Kind
from bench.targets.kserve import check_metadata, check_outputs
from bench.targets.kserve_codec import classify, config_from_mapping, encode_bodies, lazy_bodies, tensors_for

FILE = "s.toml"


def cfg(**kw: object) -> object:
    return config_from_mapping({"kind": "kserve", "url": "http://127.0.0.1:1", "model_name": "m", **kw}, FILE)


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 30), width=st.integers(1, 6), per=st.integers(1, 8), binary=st.booleans(),
       seed=st.integers(0, 2**31), datatype=st.sampled_from(["FP32", "FP64"]))
def test_tensor_layout_bodies_decode_to_the_data(rows: int, width: int, per: int, binary: bool, seed: int,
                                                 datatype: str) -> None:
    x = np.random.default_rng(seed).standard_normal((rows, width)).astype(np.float32)
    table = pa.table({"tensor": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), width)})
    c = cfg(input_name="t", datatype=datatype, binary=binary)
    bodies, header = encode_bodies(tensors_for(table, c), c, per)  # type: ignore[arg-type]
    assert [b.rows for b in bodies] == [min(per, rows - s) for s in range(0, rows, per)]
    assert (header is not None) == binary
    got = []
    for b in bodies:
        _, tensors = decode_request(b.body, str(header) if header is not None else None)
        (t,) = tensors
        assert t.name == "t" and t.datatype == datatype and t.shape == [b.rows, width]
        got.append(t.values.reshape(t.shape))
    np.testing.assert_array_equal(np.concatenate(got).astype(np.float32), x)


@settings(max_examples=40, deadline=None)
@given(words=st.lists(st.text(max_size=8), min_size=1, max_size=20), binary=st.booleans(), per=st.integers(1, 5))
def test_columns_layout_bytes_and_int64(words: list[str], binary: bool, per: int) -> None:
    table = pa.table({"w": pa.array(words), "n": pa.array(range(len(words)), pa.int64())})
    c = cfg(layout="columns", binary=binary, inputs={"n": {"name": "count"}})
    bodies, header = encode_bodies(tensors_for(table, c), c, per)  # type: ignore[arg-type]
    ws: list[bytes] = []
    ns: list[int] = []
    for b in bodies:
        _, (tw, tn) = decode_request(b.body, str(header) if header is not None else None)
        assert (tw.name, tw.datatype, tn.name, tn.datatype) == ("w", "BYTES", "count", "INT64")
        ws += list(tw.values)
        ns += tn.values.tolist()
    assert ws == [w.encode() for w in words] and ns == list(range(len(words)))


@st.composite
def mixed_tables(draw: st.DrawFn) -> pa.Table:
    """A few rows of a float list column (tensor-layout data) plus, sometimes, string and int columns."""
    rows = draw(st.integers(1, 40))
    width = draw(st.integers(1, 4))
    floats = draw(st.lists(st.floats(-1e6, 1e6, width=32), min_size=rows * width, max_size=rows * width))
    cols = {"x": pa.FixedSizeListArray.from_arrays(pa.array(floats, pa.float32()), width)}
    if draw(st.booleans()):
        cols["w"] = pa.array(draw(st.lists(st.text(max_size=6), min_size=rows, max_size=rows)))
        cols["n"] = pa.array(draw(st.lists(st.integers(-2**40, 2**40), min_size=rows, max_size=rows)), pa.int64())
    return pa.table(cols)


@settings(max_examples=80, deadline=None)
@given(table=mixed_tables(), per=st.integers(1, 9), block=st.integers(1, 7), binary=st.booleans(),
       outputs=st.booleans(), order=st.randoms(use_true_random=False))
def test_lazy_bodies_equal_eager_bodies(table: pa.Table, per: int, block: int, binary: bool, outputs: bool,
                                        order: Any) -> None:
    """Bodies encoded a block at a time, in any order the run reaches them, are the bytes of the one-pass encoding
    (same header length too); nothing is encoded before it is asked for."""
    layout = {"layout": "columns"} if table.num_columns > 1 else {"input_name": "t"}
    c = cfg(binary=binary, outputs=["o"] if outputs else [], **layout)
    tensors = tensors_for(table, c)  # type: ignore[arg-type]
    eager, eager_width = encode_bodies(tensors, c, per)  # type: ignore[arg-type]
    lazy, lazy_width = lazy_bodies(tensors, c, per, block=block)  # type: ignore[arg-type]
    assert lazy_width == eager_width and len(lazy) == len(eager) and lazy.encoded == 0
    assert lazy.rows == [b.rows for b in eager]
    wanted = list(range(len(eager)))
    order.shuffle(wanted)
    for i in wanted[:len(wanted) // 2]:
        assert lazy.body(i) == eager[i].body
    assert lazy.encoded <= min(len(eager), block * (len(wanted) // 2))
    assert list(lazy) == eager  # the rest, in order (and the first half again, from the cache)
    if binary:  # every header within the one length the engines send
        for b in eager:
            _, decoded = decode_request(b.body, str(eager_width))
            assert [t.shape[0] for t in decoded] == [b.rows] * len(decoded)


def test_config_errors_name_the_key() -> None:
    for table, key in (({"model_name": "m", "layout": "rows"}, "target.layout"),
                       ({"model_name": "m", "datatype": "FP99"}, "target.datatype"),
                       ({"model_name": "m", "shape": [29]}, None),
                       ({}, "target.model_name"),
                       ({"model_name": "m", "bogus": 1}, "target.bogus"),
                       ({"model_name": "m", "headers": {"Authorization": "x"}}, "target.headers")):
        with pytest.raises(InputError) as exc:
            c = config_from_mapping({"kind": "kserve", **table}, FILE)
            tensors_for(pa.table({"t": pa.array([1.0, 2.0])}), c)
        if key:
            assert exc.value.key == key and exc.value.file == FILE
    with pytest.raises(InputError, match="shape"):
        c = config_from_mapping({"model_name": "m", "shape": [-1, 3]}, FILE)
        tensors_for(pa.table({"t": pa.array([1.0, 2.0])}), c)
    with pytest.raises(InputError, match="non-integer"):
        c = config_from_mapping({"model_name": "m", "datatype": "INT64"}, FILE)
        tensors_for(pa.table({"t": pa.array([1.5])}), c)


@pytest.mark.parametrize(("headers", "words"), [
    ({"X-Api-Key": "s3cret-value"}, "headers_env"),     # docs/secrets.md: literal credential headers are refused
    ({"Cookie": "session=s3cret-value"}, "headers_env"),
    ({"X-Note": "caf\u00e9"}, "ASCII"),                  # crashed the preflight's client with a traceback
    ({"X-Note": "a\r\nX-Injected: 1"}, "line break"),
    ({"X Note": "v"}, "header name"),
])
def test_header_rules_of_every_target_apply_to_kserve(headers: dict[str, str], words: str) -> None:
    """kind = 'kserve' checks its own [target]; it refused only a literal Authorization header."""
    with pytest.raises(InputError) as exc:
        cfg(headers=headers)
    assert exc.value.key == f"target.headers.{next(iter(headers))}" and words in exc.value.problem
    assert "s3cret-value" not in str(exc.value)
    assert cfg(headers={"X-Trace": "ok\tfine"}).headers == {"X-Trace": "ok\tfine"}  # type: ignore[attr-defined]


def answer(*outputs: dict[str, object]) -> bytes:
    return orjson.dumps({"model_name": "m", "outputs": list(outputs)})


def test_classify_counts_rows_and_validates_shapes() -> None:
    ok = answer({"name": "p", "datatype": "INT64", "shape": [3, 1], "data": [0, 1, 0]})
    assert classify(200, ok, 3) == (int(Kind.OK), 3, 0)
    assert classify(200, ok, 4)[0] == int(Kind.BAD_RESPONSE)  # a row missing
    assert classify(200, ok, 3, expected=("dense_1",))[0] == int(Kind.BAD_RESPONSE)  # not the asked output
    short = answer({"name": "p", "datatype": "INT64", "shape": [3, 1], "data": [0, 1]})
    assert classify(200, short, 3)[0] == int(Kind.BAD_RESPONSE)  # data does not fill the shape
    nested = answer({"name": "p", "datatype": "FP32", "shape": [2, 2], "data": [[1, 2], [3, 4]]})
    assert classify(200, nested, 2)[0] == int(Kind.OK)
    ragged = answer({"name": "a", "shape": [2], "data": [1, 2]}, {"name": "b", "shape": [3], "data": [1, 2, 3]})
    assert classify(200, ragged, 2)[0] == int(Kind.BAD_RESPONSE)
    for body in (b"", b"not json", b"[]", b'{"outputs": []}', b'{"error": "boom"}'):
        assert classify(200, body, 1)[0] == int(Kind.BAD_RESPONSE)
    assert classify(400, b'{"error": "bad"}', 1)[0] == int(Kind.HTTP_ERROR)
    assert classify(429, b"", 1)[0] == int(Kind.RATE_LIMITED)


def test_check_metadata() -> None:
    meta = {"inputs": [{"name": "tensor", "datatype": "FP32", "shape": [-1, 29]}]}
    sig = (("tensor", "FP32", (-1, 29)),)
    assert check_metadata(meta, sig, "m") is None
    assert "datatype mismatch" in str(check_metadata(meta, (("tensor", "FP64", (-1, 29)),), "m"))
    assert "shape mismatch" in str(check_metadata(meta, (("tensor", "FP32", (-1, 28)),), "m"))
    assert "input 'x'" in str(check_metadata(meta, (("x", "FP32", (-1, 29)),), "m"))
    two = {"inputs": [*meta["inputs"], {"name": "extra", "datatype": "INT64", "shape": [-1]}]}
    assert "input 'extra'" in str(check_metadata(two, sig, "m"))
    assert check_metadata({"inputs": []}, sig, "m") is None  # nothing declared: nothing to check
    assert check_metadata({"inputs": [{"name": "*", "datatype": "*", "shape": [-1]}]}, sig, "m") is None


# --- values the declared datatype cannot hold (audit kserve #8) ---------------------------------------------------

_INT_RANGE = {"INT8": (-2**7, 2**7 - 1), "INT16": (-2**15, 2**15 - 1), "INT32": (-2**31, 2**31 - 1),
              "INT64": (-2**63, 2**63 - 1), "UINT8": (0, 2**8 - 1), "UINT16": (0, 2**16 - 1),
              "UINT32": (0, 2**32 - 1), "UINT64": (0, 2**64 - 1)}
_FLOAT_PACK = {"FP16": "<e", "FP32": "<f", "FP64": "<d"}


def _fits(value: int | float, datatype: str) -> bool:
    """The oracle, with Python numbers only: can ``datatype`` carry ``value`` as it is (integers exactly, floats
    without overflowing to inf: struct's packing rounds as IEEE does and raises on overflow)?"""
    if datatype == "BOOL":
        return value in (0, 1)
    if datatype in _INT_RANGE:
        lo, hi = _INT_RANGE[datatype]
        return math.isfinite(value) and value == int(value) and lo <= int(value) <= hi
    try:
        struct.pack(_FLOAT_PACK[datatype], float(value))
    except OverflowError:
        return False
    return True


_SOURCES = {"int64": (pa.int64(), st.integers(-2**63, 2**63 - 1)), "uint64": (pa.uint64(), st.integers(0, 2**64 - 1)),
            "int16": (pa.int16(), st.integers(-2**15, 2**15 - 1)), "uint8": (pa.uint8(), st.integers(0, 255)),
            "float64": (pa.float64(), st.floats(allow_nan=False, allow_infinity=False)),
            "float32": (pa.float32(), st.floats(allow_nan=False, allow_infinity=False, width=32))}
_EDGES = [0, 1, -1, 127, 128, 255, 256, 65504, 65520, 70000, 2**31, 2**32, 2**53, 2**63 - 1, 2**63, 2**64 - 1,
          -2**63, 1e6, 3.5e38, 1e300, 0.5]


@st.composite
def column_and_datatype(draw: st.DrawFn) -> tuple[pa.Array, str]:
    typ, values = _SOURCES[draw(st.sampled_from(sorted(_SOURCES)))]
    edges = [v for v in _EDGES if _fits_source(v, typ)]
    data = draw(st.lists(st.one_of(values, st.sampled_from(edges)), min_size=1, max_size=12))
    return pa.array(data, typ), draw(st.sampled_from([*_INT_RANGE, *_FLOAT_PACK, "BOOL"]))


def _fits_source(v: int | float, typ: pa.DataType) -> bool:
    """Whether the edge value ``v`` is a finite value of the source type (NaN/inf in data are datacheck's)."""
    if pa.types.is_integer(typ) and isinstance(v, float):
        return False
    try:
        return math.isfinite(pa.array([v], typ)[0].as_py())
    except (pa.ArrowInvalid, OverflowError):
        return False


@settings(max_examples=300, deadline=None)
@given(case=column_and_datatype(), binary=st.booleans())
def test_values_the_datatype_cannot_hold_are_refused_at_the_first_bad_row(case: tuple[pa.Array, str],
                                                                           binary: bool) -> None:
    """Numpy's cast wrapped integers (300 → 44 as UINT8, -5 → 2**64-5 as UINT64), made 1e6 an FP16 inf sent as
    JSON null (with a RuntimeWarning on stderr) and any number true as BOOL; all were sent and counted ok. Now:
    what fits is sent exactly (decoded by the emulator's own decoder), the rest is one InputError naming the
    input, the first row that does not fit and the datatype; numpy prints nothing."""
    column, datatype = case
    py = column.to_pylist()
    bad = [i for i, v in enumerate(py) if not _fits(v, datatype)]
    c = cfg(input_name="x", datatype=datatype, binary=binary)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a numpy RuntimeWarning fails the test
        try:
            tensors = tensors_for(pa.table({"c": column}), c)  # type: ignore[arg-type]
        except InputError as exc:
            assert bad, (py, datatype, exc)
            assert exc.key == "target.datatype" and "input 'x'" in exc.problem
            assert f"row {bad[0]}:" in exc.problem and datatype in exc.problem, (exc.problem, bad)
            return
        assert not bad, (py, datatype, [py[i] for i in bad])
        bodies, header = encode_bodies(tensors, c, len(py))  # type: ignore[arg-type]
    _, (t,) = decode_request(bodies[0].body, str(header) if header is not None else None)
    assert t.datatype == datatype
    if datatype == "BOOL":
        assert t.values.tolist() == [bool(v) for v in py]
    elif datatype in _INT_RANGE:
        assert t.values.tolist() == [int(v) for v in py]
    else:
        fmt = _FLOAT_PACK[datatype]
        assert t.values.tolist() == [struct.unpack(fmt, struct.pack(fmt, float(v)))[0] for v in py]


def test_out_of_range_in_columns_layout_names_input_and_column() -> None:
    c = cfg(layout="columns", inputs={"n": {"name": "count", "datatype": "UINT8"}})
    with pytest.raises(InputError) as exc:
        tensors_for(pa.table({"n": pa.array([1, 2, -3], pa.int64())}), c)  # type: ignore[arg-type]
    assert exc.value.key == "target.inputs.n.datatype"
    assert exc.value.problem == "input 'count' (column 'n'): row 2: -3 is out of range for UINT8 (0 to 255)"


@settings(max_examples=60, deadline=None)
@given(ints=st.lists(st.integers(-(2**63), 2**63 - 1), min_size=1, max_size=12), data=st.data(),
       datatype=st.sampled_from(["INT64", None]))
def test_tensor_layout_stacks_integer_columns_without_losing_digits(ints: list[int], data: st.DataObject,
                                                                   datatype: str | None) -> None:
    """int64 beside uint64 (or float64) has no common numpy integer type: stacked first, every value went through
    float64 and lost its digits above 2**53 even with datatype = INT64. Each column is now cast to the datatype
    before stacking; without a datatype the float64 stack is refused when it cannot hold a value exactly."""
    small = data.draw(st.lists(st.integers(0, 2**63 - 1), min_size=len(ints), max_size=len(ints)))
    table = pa.table({"a": pa.array(ints, pa.int64()), "b": pa.array(small, pa.uint64())})
    c = cfg(input_name="x", **({"datatype": datatype} if datatype else {}))
    exact = all(abs(v) <= 2**53 for v in ints + small)
    if datatype is None and not exact:
        with pytest.raises(InputError) as exc:
            tensors_for(table, c)  # type: ignore[arg-type]
        assert exc.value.key == "target.datatype"
        assert "cannot be held exactly by FP64" in exc.value.problem and "set target.datatype" in exc.value.problem
        return
    (t,) = tensors_for(table, c)  # type: ignore[arg-type]
    assert t.datatype == (datatype or "FP64") and t.shape == (len(ints), 2)
    assert [[int(v) for v in row] for row in t.values.tolist()] == [list(r) for r in zip(ints, small, strict=True)]


def test_tensor_layout_names_the_column_a_datatype_cannot_hold() -> None:
    table = pa.table({"a": pa.array([1, 2], pa.int64()), "b": pa.array([3, 2**63 + 5], pa.uint64())})
    with pytest.raises(InputError) as exc:
        tensors_for(table, cfg(input_name="x", datatype="INT64"))  # type: ignore[arg-type]
    assert exc.value.key == "target.datatype"
    assert exc.value.problem == ("input 'x' (column 'b'): row 1: 9223372036854775813 is out of range for INT64 "
                                 "(-9223372036854775808 to 9223372036854775807)")


# --- unsigned and binary columns (audit kserve #9) -------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(bits=st.sampled_from([8, 16, 32, 64]), data=st.data(), binary=st.booleans(), per=st.integers(1, 5))
def test_unsigned_columns_are_sent_as_uint(bits: int, data: st.DataObject, binary: bool, per: int) -> None:
    """uint8..64 columns had no V2 datatype ("Arrow type uint8 has no V2 datatype"), even with datatype = UINT8."""
    values = data.draw(st.lists(st.integers(0, 2**bits - 1), min_size=1, max_size=20))
    typ = getattr(pa, f"uint{bits}")()
    expected: list[Any]
    if data.draw(st.booleans()):  # a list column (an image row, say): [rows, 2]
        flat = values + values[::-1]
        col, expected = pa.FixedSizeListArray.from_arrays(pa.array(flat, typ), 2), [flat[i:i + 2] for i in
                                                                                     range(0, len(flat), 2)]
    else:
        col, expected = pa.array(values, typ), values
    c = cfg(layout="columns", binary=binary)
    bodies, header = encode_bodies(tensors_for(pa.table({"u": col}), c), c, per)  # type: ignore[arg-type]
    got: list[Any] = []
    for b in bodies:
        _, (t,) = decode_request(b.body, str(header) if header is not None else None)
        assert t.datatype == f"UINT{bits}"
        got += t.values.reshape(t.shape).tolist()
    assert got == expected


@settings(max_examples=60, deadline=None)
@given(blobs=st.lists(st.binary(max_size=12), min_size=1, max_size=15), per=st.integers(1, 4),
       large=st.booleans())
def test_binary_columns_go_as_bytes_with_the_binary_extension(blobs: list[bytes], per: int, large: bool) -> None:
    """With binary = true, binary columns are BYTES, byte for byte; a JSON body refuses them by their type (the
    refusal said 'not UTF-8 text', also for bytes that were valid UTF-8)."""
    table = pa.table({"b": pa.array(blobs, pa.large_binary() if large else pa.binary())})
    c = cfg(layout="columns", binary=True)
    bodies, header = encode_bodies(tensors_for(table, c), c, per)  # type: ignore[arg-type]
    got: list[bytes] = []
    for b in bodies:
        _, (t,) = decode_request(b.body, str(header))
        assert t.datatype == "BYTES"
        got += list(t.values)
    assert got == blobs
    with pytest.raises(InputError) as exc:
        tensors_for(table, cfg(layout="columns"))  # type: ignore[arg-type]
    assert "a binary column" in exc.value.problem and "binary = true" in exc.value.problem
    assert "UTF-8" not in exc.value.problem


def test_datacheck_names_the_binary_type_and_the_targets_way_out() -> None:
    table = pa.table({"b": pa.array([b"x"], pa.binary())})
    with pytest.raises(InputError) as exc:
        check_tensors(table, "b", "d.parquet", binary_hint="binary = true sends them as BYTES")
    assert exc.value.file == "d.parquet" and exc.value.key == "b"
    assert "a binary column (Arrow type binary)" in exc.value.problem and "binary = true" in exc.value.problem
    assert "not UTF-8" not in exc.value.problem
    check_tensors(table, "b", "d.parquet", json_body=False)  # a binary body carries them


# --- V2 parameters (audit kserve #12) -----------------------------------------------------------------------------

_param_values = st.one_of(st.text(max_size=6), st.integers(-2**40, 2**40), st.booleans(),
                          st.floats(allow_nan=False, allow_infinity=False))
_params = st.dictionaries(st.text(min_size=1, max_size=8).filter(lambda k: k != "binary_data_size"), _param_values,
                          max_size=3)


@settings(max_examples=80, deadline=None)
@given(request=_params, tensor_in=_params, out=_params, binary=st.booleans(), columns=st.booleans(),
       rows=st.integers(1, 12), per=st.integers(1, 5))
def test_parameters_are_sent_exactly_at_each_level(request: dict[str, Any], tensor_in: dict[str, Any],
                                                   out: dict[str, Any], binary: bool, columns: bool, rows: int,
                                                   per: int) -> None:
    """[target] parameters (the request's), input_parameters / [target.inputs.COL] parameters (each input's) and
    outputs = [{ name, parameters }] (each requested output's) reach the body as written; a binary input's
    binary_data_size is added beside the input's own (and the header bound still holds)."""
    table = pa.table({"a": pa.array([float(i) for i in range(rows)]), "b": pa.array(range(rows), pa.int64())})
    layout: dict[str, Any] = ({"layout": "columns", "inputs": {"a": {"parameters": tensor_in}}} if columns
                              else {"input_name": "t", "input_parameters": tensor_in})
    c = cfg(binary=binary, parameters=request, outputs=["plain", {"name": "o", "parameters": out}], **layout)
    bodies, header = encode_bodies(tensors_for(table, c), c, per)  # type: ignore[arg-type]
    for b in bodies:
        req, tensors = decode_request(b.body, str(header) if header is not None else None)
        assert req.get("parameters", {}) == request
        assert req["outputs"] == [{"name": "plain"}, {"name": "o", **({"parameters": out} if out else {})}]
        first = req["inputs"][0].get("parameters", {})
        assert {k: v for k, v in first.items() if k != "binary_data_size"} == tensor_in
        assert ("binary_data_size" in first) == binary
        if columns:  # the column without parameters gets none (beyond binary_data_size)
            assert set(req["inputs"][1].get("parameters", {})) <= {"binary_data_size"}
        assert [t.shape[0] for t in tensors] == [b.rows] * len(tensors)


@pytest.mark.parametrize(("table", "key", "words"), [
    ({"parameters": "np"}, "target.parameters", "table of V2 parameters"),
    ({"parameters": {"binary_data_size": 4}}, "target.parameters.binary_data_size", "bench sets it"),
    ({"parameters": {"x": float("nan")}}, "target.parameters.x", "no JSON form"),
    ({"parameters": {"when": __import__("datetime").date(2024, 1, 1)}}, "target.parameters.when", "as a string"),
    ({"input_parameters": [1]}, "target.input_parameters", "table of V2 parameters"),
    ({"layout": "columns", "input_parameters": {}}, "target.input_parameters", "layout = 'tensor'"),
    ({"layout": "columns", "inputs": {"a": {"parameters": 1}}}, "target.inputs.a.parameters", "table"),
    ({"outputs": [{"name": "o", "parameters": {"binary_data_size": 1}}]},
     "target.outputs[0].parameters.binary_data_size", "bench sets it"),
    ({"outputs": [{"name": "o", "bogus": 1}]}, "target.outputs[0]", "name, parameters"),
    ({"outputs": ["o", "o"]}, "target.outputs[1]", "twice"),
    ({"outputs": "o"}, "target.outputs", "list"),
])
def test_parameters_config_errors_name_the_key(table: dict[str, Any], key: str, words: str) -> None:
    with pytest.raises(InputError) as exc:
        cfg(**table)
    assert exc.value.key == key and words in exc.value.problem and exc.value.file == FILE


# --- answers: scalars and the binary extension (audit kserve #13) ---------------------------------------------------

_OUT_TYPES = {"FP32": "<f4", "FP64": "<f8", "INT64": "<i8", "UINT8": "<u1", "BOOL": "|b1", "BYTES": None}


@st.composite
def v2_answers(draw: st.DrawFn) -> tuple[bytes, int, int]:
    """A valid V2 answer for ``rows`` rows (the body, rows, the header's padding): some outputs JSON, some binary
    (raw bytes after a JSON header, maybe padded with spaces), some scalars (shape [])."""
    rows = draw(st.integers(1, 6))
    outputs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    scalars_only = True
    for i in range(draw(st.integers(1, 3))):
        datatype = draw(st.sampled_from(sorted(_OUT_TYPES)))
        shape = [] if draw(st.booleans()) else [rows, draw(st.integers(1, 3))]
        scalars_only &= not shape
        n = math.prod(shape)
        out: dict[str, Any] = {"name": f"o{i}", "datatype": datatype, "shape": shape}
        if datatype == "BYTES":
            items = draw(st.lists(st.binary(max_size=5), min_size=n, max_size=n))
            raw = b"".join(struct.pack("<I", len(v)) + v for v in items)
            data: list[Any] = [v.decode("latin-1") for v in items]
        else:
            numbers = np.arange(n).astype(_OUT_TYPES[datatype])
            raw, data = numbers.tobytes(), numbers.tolist()
        if draw(st.booleans()):
            out["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            out["data"] = data
        outputs.append(out)
    pad = draw(st.integers(0, 8)) if blobs else 0
    return orjson.dumps({"model_name": "m", "outputs": outputs}) + b" " * pad + b"".join(blobs), rows, pad


@settings(max_examples=150, deadline=None)
@given(case=v2_answers(), cut=st.integers(1, 3))
def test_scalar_and_binary_answers_are_ok_and_damaged_ones_are_not(case: tuple[bytes, int, int], cut: int) -> None:
    """A scalar output (shape []) and a binary-extension answer were counted bad_response:200."""
    body, rows, pad = case
    assert classify(200, body, rows) == (int(Kind.OK), rows, 0)
    if not body.endswith(b"}"):  # binary bytes follow: bytes missing or extra make a damaged answer
        assert classify(200, body + b"\0" * cut, rows)[0] == int(Kind.BAD_RESPONSE)
        if not pad:  # (a header padded with spaces and a short binary part look alike without the header length)
            assert classify(200, body[:-cut], rows)[0] == int(Kind.BAD_RESPONSE)


def test_classify_scalars_count_the_rows_sent() -> None:
    scalar = answer({"name": "s", "datatype": "FP32", "shape": [], "data": [1.0]})
    assert classify(200, scalar, 7) == (int(Kind.OK), 7, 0)  # one answer for the whole request
    assert classify(200, answer({"name": "s", "shape": [], "data": []}), 1)[0] == int(Kind.BAD_RESPONSE)
    mixed = answer({"name": "s", "shape": [], "data": [1]}, {"name": "p", "shape": [3], "data": [1, 2, 3]})
    assert classify(200, mixed, 3) == (int(Kind.OK), 3, 0) and classify(200, mixed, 4)[0] == int(Kind.BAD_RESPONSE)
    binary = orjson.dumps({"outputs": [{"name": "p", "datatype": "FP32", "shape": [2, 1],
                                        "parameters": {"binary_data_size": 8}}]})
    assert classify(200, binary + b"\x20" * 8, 2) == (int(Kind.OK), 2, 0)  # values whose bytes are spaces
    assert classify(200, binary, 2)[0] == int(Kind.BAD_RESPONSE)  # the binary part is missing


def test_check_outputs() -> None:
    meta = {"outputs": [{"name": "predict", "datatype": "INT64", "shape": [-1, 1]}]}
    assert check_outputs(meta, ("predict",), "m") is None and check_outputs(meta, (), "m") is None
    assert check_outputs(meta, ("predict", "nope"), "m") == \
        "output 'nope': model m has no such output (its outputs: predict)"
    assert check_outputs({"outputs": []}, ("x",), "m") is None  # nothing declared: nothing to check
    assert check_outputs({}, ("x",), "m") is None
    assert check_outputs({"outputs": [{"name": "*"}]}, ("x",), "m") is None  # the echo model's wildcard
