"""The emulator's Open Inference Protocol v2 routes and its /metrics, with plain httpx against a real `bench serve`."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterator

import httpx
import numpy as np
import pytest
from prometheus_text import parse

from bench.emulator.model import predict

ROW = [0.1 * i for i in range(29)]


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    """One emulator for the module (these tests only read or add requests; counts are compared as deltas)."""
    import subprocess
    import sys

    from bench.emulator.server import LISTENING_PREFIX

    proc = subprocess.Popen([sys.executable, "-m", "bench", "serve", "--port", "0", "--latency-ms", "1"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith(LISTENING_PREFIX + "http://127.0.0.1:"), line
        yield line.split()[-1]
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def client(base: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base, timeout=10) as c:
        yield c


def _infer(client: httpx.Client, body: object, path: str = "/v2/models/ccfraud/infer") -> httpx.Response:
    return client.post(path, json=body)


def test_health_and_server_metadata(client: httpx.Client) -> None:
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    meta = client.get("/v2").json()
    assert meta["name"] and "binary_tensor_data" in meta["extensions"]
    ready = client.get("/v2/models/ccfraud/ready")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    assert client.get("/v2/models/ccfraud/versions/1/ready").status_code == 200


def test_model_metadata(client: httpx.Client) -> None:
    meta = client.get("/v2/models/ccfraud").json()
    assert meta["name"] == "ccfraud" and meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": "tensor", "datatype": "FP32", "shape": [-1, 29]}]
    assert meta["outputs"] == [{"name": "dense_1", "datatype": "FP32", "shape": [-1, 1]}]
    assert client.get("/v2/models/ccfraud/versions/1").json() == meta
    missing = client.get("/v2/models/nope")
    assert missing.status_code == 404 and "nope" in missing.json()["error"]
    assert client.get("/v2/models/ccfraud/versions/9").status_code == 404


@pytest.mark.parametrize("datatype", ["FP32", "FP64", "INT64"])
@pytest.mark.parametrize("nested", [False, True])
def test_infer_one_row_out_per_row_in(client: httpx.Client, datatype: str, nested: bool) -> None:
    rows = [[float(i + j) for j in range(29)] for i in range(3)]
    if datatype == "INT64":
        rows = [[int(v) for v in r] for r in rows]
    data: list[object] = list(rows) if nested else [v for r in rows for v in r]
    r = _infer(client, {"id": "req-7", "inputs": [{"name": "tensor", "shape": [3, 29], "datatype": datatype,
                                                   "data": data}]})
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["model_name"] == "ccfraud" and answer["model_version"] == "1" and answer["id"] == "req-7"
    (out,) = answer["outputs"]
    assert out["name"] == "dense_1" and out["datatype"] == "FP32" and out["shape"] == [3, 1]
    expected = predict(np.asarray(rows, dtype=np.float64)).astype(np.float32)
    assert np.allclose(out["data"], expected, rtol=1e-6)


def test_versioned_infer_and_generated_ids(client: httpx.Client) -> None:
    body = {"inputs": [{"name": "tensor", "shape": [1, 29], "datatype": "FP32", "data": ROW}]}
    a = _infer(client, body, "/v2/models/ccfraud/versions/1/infer").json()
    b = _infer(client, body).json()
    assert a["id"] and b["id"] and a["id"] != b["id"]
    assert a["outputs"] == b["outputs"]


@pytest.mark.parametrize(("tensor", "words"), [
    ({"name": "tensor", "shape": [2, 29], "datatype": "FP32", "data": ROW}, ["needs 58 values, got 29"]),
    ({"name": "tensor", "shape": [1, 28], "datatype": "FP32", "data": ROW[:28]}, ["shape mismatch", "[-1, 29]"]),
    ({"name": "tensor", "shape": [1, 29], "datatype": "BYTES", "data": [str(v) for v in ROW]},
     ["datatype mismatch", "BYTES"]),
    ({"name": "tensor", "shape": [1, 29], "datatype": "INT64", "data": ROW}, ["non-integer", "INT64"]),
    ({"name": "tensor", "shape": [1, 29], "datatype": "FP32", "data": [*ROW[:28], None]}, ["non-numbers"]),
    ({"name": "tensor", "shape": [1, 29], "datatype": "FP32", "data": [*ROW[:28], "x"]}, ["non-numbers"]),
    ({"name": "tensor", "shape": [2, 29], "datatype": "FP32", "data": [ROW, ROW[:28]]}, ["ragged"]),
    ({"name": "tensor", "shape": [1, 29], "datatype": "FP17", "data": ROW}, ["unknown datatype"]),
    ({"name": "x", "shape": [1, 29], "datatype": "FP32", "data": ROW}, ["takes one input 'tensor'"]),
    ({"name": "tensor", "shape": "1x29", "datatype": "FP32", "data": ROW}, ["shape must be a list"]),
])
def test_bad_tensors_get_400_with_a_reason(client: httpx.Client, tensor: dict[str, object],
                                           words: list[str]) -> None:
    r = _infer(client, {"inputs": [tensor]})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    for word in words:
        assert word in error


def test_bad_requests_get_400(client: httpx.Client) -> None:
    assert client.post("/v2/models/ccfraud/infer", content=b"{nope").status_code == 400
    assert _infer(client, {"inputs": []}).status_code == 400
    assert _infer(client, [1, 2]).status_code == 400
    unknown = _infer(client, {"inputs": [{"name": "tensor", "shape": [1, 29], "datatype": "FP32", "data": ROW}],
                              "outputs": [{"name": "nope"}]})
    assert unknown.status_code == 400 and "nope" in unknown.json()["error"]


def _binary_request(values: np.ndarray, header_extra: dict[str, object]) -> tuple[bytes, dict[str, str]]:
    raw = values.astype("<f4").tobytes()
    head = json.dumps({"inputs": [{"name": "tensor", "shape": list(values.shape), "datatype": "FP32",
                                   "parameters": {"binary_data_size": len(raw)}}], **header_extra}).encode()
    return head + raw, {"Inference-Header-Content-Length": str(len(head)),
                        "Content-Type": "application/octet-stream"}


def test_binary_tensors_in_and_out(client: httpx.Client) -> None:
    values = np.array([ROW, ROW[::-1]], dtype=np.float32)
    body, headers = _binary_request(values, {"outputs": [{"name": "dense_1", "parameters": {"binary_data": True}}]})
    r = client.post("/v2/models/ccfraud/infer", content=body, headers=headers)
    assert r.status_code == 200, r.text
    n = int(r.headers["inference-header-content-length"])
    head = json.loads(r.content[:n])
    (out,) = head["outputs"]
    assert out["shape"] == [2, 1] and out["parameters"]["binary_data_size"] == 8 and "data" not in out
    scores = np.frombuffer(r.content[n:], dtype="<f4")
    assert np.allclose(scores, predict(values.astype(np.float64)), rtol=1e-6)
    # binary in, JSON out when not asked for binary
    body, headers = _binary_request(values, {})
    r = client.post("/v2/models/ccfraud/infer", content=body, headers=headers)
    assert r.status_code == 200 and np.allclose(r.json()["outputs"][0]["data"], scores)
    # NaN can only come in binary: the model refuses it
    body, headers = _binary_request(np.array([[*ROW[:28], np.nan]], dtype=np.float32), {})
    r = client.post("/v2/models/ccfraud/infer", content=body, headers=headers)
    assert r.status_code == 400 and "NaN" in r.json()["error"]
    # a binary size beyond the body
    r = client.post("/v2/models/ccfraud/infer", content=body[:-4], headers=headers)
    assert r.status_code == 400 and "binary_data_size" in r.json()["error"]


def test_echo_model_bytes_and_ints(client: httpx.Client) -> None:
    r = _infer(client, {"inputs": [
        {"name": "text", "shape": [2], "datatype": "BYTES", "data": ["héllo", ""]},
        {"name": "n", "shape": [2, 1], "datatype": "INT64", "data": [[1], [2]]}]}, "/v2/models/echo/infer")
    assert r.status_code == 200, r.text
    outs = {o["name"]: o for o in r.json()["outputs"]}
    assert outs["text"] == {"name": "text", "datatype": "BYTES", "shape": [2], "data": ["héllo", ""]}
    assert outs["n"]["data"] == [1, 2] and outs["n"]["shape"] == [2, 1]
    # BYTES in the binary extension: 4-byte little-endian length prefixes
    raw = b"".join(struct.pack("<I", len(s)) + s for s in (b"ab", b"\x00\xff"))
    head = json.dumps({"inputs": [{"name": "b", "shape": [2], "datatype": "BYTES",
                                   "parameters": {"binary_data_size": len(raw)}}],
                       "parameters": {"binary_data_output": True}}).encode()
    r = client.post("/v2/models/echo/infer", content=head + raw,
                    headers={"Inference-Header-Content-Length": str(len(head))})
    n = int(r.headers["inference-header-content-length"])
    assert r.content[n:] == raw
    mismatch = _infer(client, {"inputs": [{"name": "a", "shape": [2], "datatype": "INT64", "data": [1, 2]},
                                          {"name": "b", "shape": [3], "datatype": "INT64", "data": [1, 2, 3]}]},
                      "/v2/models/echo/infer")
    assert mismatch.status_code == 400


def _infer_counts(client: httpx.Client) -> dict[str, float]:
    fams = parse(client.get("/metrics").text)
    out: dict[str, float] = {}
    for _, labels, value in fams["rest_server_requests_total"].samples:
        if labels["path"] == "/v2/models/{}/infer" and labels["method"] == "POST":
            out[labels["status_code"]] = value
    for _, labels, value in fams["model_infer_request_success_total"].samples:
        out[f"success:{labels['model']}"] = value
    for sample, labels, value in fams["model_infer_request_duration_seconds"].samples:
        if sample.endswith("_count"):
            out[f"timed:{labels['model']}"] = value
    return out


def test_metrics_count_what_was_sent(client: httpx.Client) -> None:
    before = _infer_counts(client)
    good = {"inputs": [{"name": "tensor", "shape": [1, 29], "datatype": "FP32", "data": ROW}]}
    for _ in range(7):
        assert _infer(client, good).status_code == 200
    for _ in range(3):
        assert _infer(client, {"inputs": []}).status_code == 400
    after = _infer_counts(client)

    def delta(key: str) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert delta("200") == 7 and delta("400") == 3
    assert delta("success:ccfraud") == 7 and delta("timed:ccfraud") == 7


def test_metrics_cover_every_route_family(client: httpx.Client) -> None:
    client.get("/health")
    client.post("/infer", json=[{"tensor": ROW}])
    client.get("/v2.1/projects/demo/deployments")
    client.get("/v2/health/live")
    r = client.get("/metrics")
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    fams = parse(r.text)
    paths = {labels["path"] for _, labels, _ in fams["rest_server_requests_total"].samples}
    assert {"/health", "/infer", "/v2/health/live"} <= paths
    assert any(p.startswith("/v2.1/projects/") for p in paths)
    assert fams["rest_server_request_duration_seconds"].kind == "histogram"
    assert fams["rest_server_requests_in_progress"].kind == "gauge"
    models = {labels["model"] for _, labels, _ in fams["model_infer_request_duration_seconds"].samples}
    assert "ccfraud" in models


def test_not_ready_while_starting(serve_emulator: Callable[..., str]) -> None:
    base = serve_emulator("--startup-s", "60")
    with httpx.Client(base_url=base, timeout=10) as c:
        assert c.get("/v2/health/live").status_code == 200
        assert c.get("/v2/health/ready").json() == {"ready": False}
        assert c.get("/v2/models/ccfraud/ready").status_code == 400
        r = _infer(c, {"inputs": [{"name": "tensor", "shape": [1, 29], "datatype": "FP32", "data": ROW}]})
        assert r.status_code == 503 and "not ready" in r.json()["error"]


@pytest.mark.parametrize(("inputs", "extra", "status", "words"), [
    ([{"name": "x", "shape": [2], "datatype": "UINT8", "data": [1, 300]}], {}, 400, "out of range for UINT8"),
    ([{"name": "x", "shape": [1], "datatype": "INT8", "data": [-129]}], {}, 400, "out of range for INT8"),
    ([{"name": "x", "shape": [1], "datatype": "FP16", "data": [1e6]}], {}, 400, "out of range for FP16"),
    ([{"name": "x", "shape": [2], "datatype": "UINT64", "data": [0, 2**63]}], {}, 200, ""),  # was "non-integer"
    ([{"name": "x", "shape": [1], "datatype": "INT8", "data": [1], "parameters": {"content_type": "np"}}],
     {"parameters": {"k": 1}, "outputs": [{"name": "x", "parameters": {"binary_data": False}}]}, 200, ""),
    ([{"name": "x", "shape": [1], "datatype": "INT8", "data": [1], "parameters": "np"}], {}, 400,
     "input 'x': 'parameters' must be an object"),
    ([{"name": "x", "shape": [1], "datatype": "INT8", "data": [1]}], {"parameters": [1]}, 400,
     "the request: 'parameters' must be an object"),
])
def test_echo_model_checks_ranges_and_parameters(client: httpx.Client, inputs: list[dict[str, object]],
                                                 extra: dict[str, object], status: int, words: str) -> None:
    """The emulator, bench's test server, wrapped 300 to 44 as UINT8 and made 1e6 an FP16 inf (as numpy casts),
    refused [0, 2**63] as UINT64 (numpy reads it as floats), and ignored parameters that are not objects."""
    r = _infer(client, {"inputs": inputs, **extra}, "/v2/models/echo/infer")
    assert r.status_code == status, r.text
    if status == 200:
        assert r.json()["outputs"][0]["data"] == inputs[0]["data"]
    else:
        assert words in r.json()["error"]
