"""bench.targets.kserve_codec / kserve: V2 bodies decode to the data (checked by the emulator's own decoder),
answers are judged by rows, the model's metadata is checked against the data, config errors name the key."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.emulator.kserve import decode_request
from bench.errors import InputError
from bench.results import Kind
from bench.targets.kserve import check_metadata
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
