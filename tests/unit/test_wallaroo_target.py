"""bench.targets.wallaroo and bench.targets.http: URLs, headers, query parameters, answer classification."""

from __future__ import annotations

import timeit
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.ipc as ipc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.errors import InputError
from bench.results import Kind
from bench.targets import http, wallaroo

LAST_MODEL = orjson.dumps({"model_name": "ccfraud", "model_sha": "bc85ce59"}).decode()  # a JSON string with {


def record(i: int, meta: bool = True, flat: bool = False, elapsed: tuple[int, ...] = (1500, 2500)) -> dict[str, Any]:
    rec: dict[str, Any] = {"time": 1713299277339, "in": {"tensor": [0.5 * i, -1.25]}, "out": {"dense_1": [0.01]},
                           "anomaly": {"count": 0}}
    if meta:
        rec["metadata"] = {"last_model": LAST_MODEL, "pipeline_version": "v1", "elapsed": list(elapsed),
                           "dropped": [], "partition": "engine-abc"}
    if flat:
        rec = {(f"{k}.{kk}" if isinstance(v, dict) else k): vv
               for k, v in rec.items() for kk, vv in (v.items() if isinstance(v, dict) else [("", v)])}
    return rec


def answer(n: int, **kw: Any) -> bytes:
    return orjson.dumps([record(i, **kw) for i in range(n)])


classify_json = wallaroo.make_classifier("pandas-records")
classify_arrow = wallaroo.make_classifier("arrow")


def test_headers() -> None:
    assert wallaroo.request_headers("pandas-records") == {"Content-Type": "application/json; format=pandas-records"}
    assert wallaroo.request_headers("arrow") == {"Content-Type": "application/vnd.apache.arrow.file",
                                                 "Accept": "application/vnd.apache.arrow.file"}
    assert wallaroo.request_headers("arrow", token="t0k")["Authorization"] == "Bearer t0k"
    with pytest.raises(InputError):
        wallaroo.request_headers("csv")  # type: ignore[arg-type]


def test_urls() -> None:
    assert (wallaroo.inference_url("https://acme.api.example.ai/", "ccfraud-7", "ccfraud")
            == "https://acme.api.example.ai/v1/api/pipelines/infer/ccfraud-7/ccfraud")
    assert wallaroo.internal_url("ccfraud-7", "ccfraud") == "http://engine-lb.ccfraud-7:29502/pipelines/ccfraud"
    with pytest.raises(InputError, match="scheme"):
        wallaroo.inference_url("acme.api.example.ai", "ccfraud-7", "ccfraud")
    with pytest.raises(InputError) as info:
        wallaroo.inference_url("https://x", "", "p")
    assert info.value.key == "deployment"


def test_dataset_params() -> None:
    params = wallaroo.dataset_params()
    assert params == [("dataset[]", "*"), ("dataset.exclude[]", "metadata"), ("dataset.separator", ".")]
    url = wallaroo.with_query("http://h/p?x=1", params)
    assert url == "http://h/p?x=1&dataset%5B%5D=%2A&dataset.exclude%5B%5D=metadata&dataset.separator=."
    assert wallaroo.with_dataset_params("http://h/p", exclude=(), separator=None) == "http://h/p?dataset%5B%5D=%2A"
    assert wallaroo.with_query("http://h/p", []) == "http://h/p"


@pytest.mark.parametrize("kw", [{}, {"meta": False}, {"flat": True}, {"flat": True, "meta": False}])
def test_json_ok_counts_rows(kw: dict[str, Any]) -> None:
    kind, rows, server_ns = classify_json(200, answer(10, **kw), 10)
    assert (kind, rows) == (Kind.OK, 10)
    assert server_ns == (4000 if kw.get("meta", True) else 0)


def test_json_elapsed_from_first_record_only() -> None:
    body = orjson.dumps([record(0, elapsed=(7, 8, 9)), record(1, elapsed=(1000, 1000))])
    assert classify_json(200, body, 2) == (Kind.OK, 2, 24)
    assert classify_json(200, answer(1, elapsed=(123456789012,)), 1) == (Kind.OK, 1, 123456789012)


def test_json_row_mismatch_is_bad_response_with_true_count() -> None:
    assert classify_json(200, answer(9), 10)[:2] == (Kind.BAD_RESPONSE, 9)
    assert classify_json(200, answer(11), 10)[:2] == (Kind.BAD_RESPONSE, 11)
    assert classify_json(200, b"[]", 1)[:2] == (Kind.BAD_RESPONSE, 0)


@pytest.mark.parametrize("body", [b"", b"not json", answer(3)[:-1], answer(3)[:40], b'{"time": 1}', b"null"])
def test_json_undecodable_or_truncated_is_bad_response(body: bytes) -> None:
    assert classify_json(200, body, 3)[0] == Kind.BAD_RESPONSE


def test_json_other_layouts_fall_back_to_a_full_parse() -> None:
    pretty = orjson.dumps([record(i) for i in range(4)], option=orjson.OPT_INDENT_2)
    assert classify_json(200, pretty, 4)[:2] == (Kind.OK, 4)
    reordered = orjson.dumps([{"out": {"dense_1": [0.1]}, "time": 1} for _ in range(4)])
    assert classify_json(200, reordered, 4)[:2] == (Kind.OK, 4)
    # nested objects that start with "time" inflate the scan; the full parse gets the true count
    nested = orjson.dumps([{"time": 1, "in": {"time": 2}} for _ in range(3)])
    assert classify_json(200, nested, 3)[:2] == (Kind.OK, 3)
    assert classify_json(200, nested, 6)[:2] == (Kind.BAD_RESPONSE, 3)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 30), rows_in=st.integers(1, 30), meta=st.booleans(), flat=st.booleans())
def test_json_scan_agrees_with_full_parse(n: int, rows_in: int, meta: bool, flat: bool) -> None:
    body = answer(n, meta=meta, flat=flat)
    kind, rows, _ = classify_json(200, body, rows_in)
    assert rows == len(orjson.loads(body))
    assert kind == (Kind.OK if n == rows_in else Kind.BAD_RESPONSE)


@pytest.mark.parametrize("classify", [classify_json, classify_arrow, http.classify])
def test_status_codes(classify: Any) -> None:
    assert classify(429, b'{"error":"slow down"}', 5) == (Kind.RATE_LIMITED, 0, 0)
    for status in (400, 401, 404, 500, 503, 302):
        assert classify(status, b'{"code":500,"status":"error","error":"x","source":"engine"}', 5) == (
            Kind.HTTP_ERROR, 0, 0)


def test_http_target_any_2xx_is_ok() -> None:
    c = http.make_classifier()
    assert c(200, b"anything", 7) == (Kind.OK, 7, 0)
    assert c(204, b"", 1) == (Kind.OK, 1, 0)


def arrow_answer(n: int, meta: bool = True, batches: int = 1) -> bytes:
    cols: dict[str, pa.Array] = {
        "time": pa.array([1713299277339] * n, pa.int64()),
        "out": pa.array([{"dense_1": [0.25]}] * n, pa.struct([("dense_1", pa.list_(pa.float32()))])),
    }
    if meta:
        cols["metadata"] = pa.array([{"last_model": LAST_MODEL, "elapsed": [100, 200, 300]}] * n,
                                    pa.struct([("last_model", pa.string()), ("elapsed", pa.list_(pa.uint64()))]))
    table = pa.table(cols)
    sink = pa.BufferOutputStream()
    with ipc.new_file(sink, table.schema) as w:
        step = max(1, -(-n // batches))
        for start in range(0, max(n, 1), step):
            w.write_table(table.slice(start, step))
    return sink.getvalue().to_pybytes()  # type: ignore[no-any-return]


def test_arrow_ok_and_elapsed() -> None:
    assert classify_arrow(200, arrow_answer(10), 10) == (Kind.OK, 10, 600)
    assert classify_arrow(200, arrow_answer(10, meta=False), 10) == (Kind.OK, 10, 0)
    assert classify_arrow(200, arrow_answer(10, batches=3), 10)[:2] == (Kind.OK, 10)


def test_arrow_flat_metadata_column() -> None:
    table = pa.table({"time": pa.array([1, 1], pa.int64()),
                      "metadata.elapsed": pa.array([[40, 2], [9, 9]], pa.list_(pa.uint64()))})
    sink = pa.BufferOutputStream()
    with ipc.new_file(sink, table.schema) as w:
        w.write_table(table)
    assert classify_arrow(200, sink.getvalue().to_pybytes(), 2) == (Kind.OK, 2, 42)


@pytest.mark.parametrize("elapsed", [b'["x"]', b"[]", b"[1,", b'[{"a":1}]'])
def test_json_odd_elapsed_is_zero_not_an_error(elapsed: bytes) -> None:
    body = b'[{"time":1,"metadata":{"elapsed":' + elapsed + b'}}]'
    # rows are counted, not validated: a well-framed answer with a broken elapsed still counts as ok
    assert classify_json(200, body, 1) == (Kind.OK, 1, 0)


def test_arrow_mismatch_and_garbage() -> None:
    assert classify_arrow(200, arrow_answer(4), 5)[:2] == (Kind.BAD_RESPONSE, 4)
    assert classify_arrow(200, answer(5), 5)[0] == Kind.BAD_RESPONSE  # JSON where Arrow was asked for
    assert classify_arrow(200, arrow_answer(5)[:-20], 5)[0] == Kind.BAD_RESPONSE  # truncated footer
    assert classify_arrow(200, b"ARROW1\x00\x00junk", 5)[0] == Kind.BAD_RESPONSE


def test_error_source_and_message() -> None:
    body = b'{"code": 401, "status": "error", "error": "Jwt is missing", "source": "platform"}'
    assert wallaroo.error_source(body) == "platform"
    assert wallaroo.error_message(body) == "Jwt is missing"
    short = b'{"msg": "Deployment not found", "code": 404}'
    assert wallaroo.error_source(short) is None
    assert wallaroo.error_message(short) == "Deployment not found"
    for junk in (b"", b"<html>", b"[1]", b'{"source": 3}'):
        assert wallaroo.error_source(junk) is None
        assert wallaroo.error_message(junk) is None


def test_make_classifier_rejects_unknown_format() -> None:
    with pytest.raises(InputError):
        wallaroo.make_classifier("csv")  # type: ignore[arg-type]


@pytest.mark.perf
def test_perf_scan_versus_full_parse(capsys: pytest.CaptureFixture[str]) -> None:
    body = orjson.dumps([dict(record(i), **{"in": {"tensor": [0.123456789 * (i + j) for j in range(29)]}})
                         for i in range(10)])  # like a real 10-row ccfraud answer with metadata
    n = 20_000
    scan = timeit.timeit(lambda: classify_json(200, body, 10), number=n) / n * 1e6
    parse = timeit.timeit(lambda: len(orjson.loads(body)), number=n) / n * 1e6
    with capsys.disabled():
        print(f"\n10-row answer, {len(body)} bytes: classify {scan:.2f} us, orjson.loads+len {parse:.2f} us")
    assert scan < parse
