"""The emulator over real loopback sockets: Wallaroo inference in both formats, errors, capacity model, h2c.

Each emulator runs as a child process (EmbeddedEmulator), exactly as `bench run` starts it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator

import anyio
import httpx
import numpy as np
import orjson
import pyarrow as pa
import pytest

from bench.emulator.config import EmulatorConfig
from bench.emulator.embedded import EmbeddedEmulator
from bench.emulator.model import predict
from bench.emulator.server import LISTENING_PREFIX

ARROW = "application/vnd.apache.arrow.file"
RECORDS = "application/json; format=pandas-records"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _matrix(n: int, seed: int = 7) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 29)).astype(np.float32)


def _records(matrix: np.ndarray) -> bytes:
    return orjson.dumps([{"tensor": row} for row in matrix.astype(np.float64).tolist()])


def _arrow(matrix: np.ndarray) -> bytes:
    tensor = pa.FixedSizeListArray.from_arrays(pa.array(matrix.ravel()), 29)
    table = pa.table({"tensor": tensor})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


@pytest.fixture(scope="module")
def emu() -> Iterator[EmbeddedEmulator]:
    with EmbeddedEmulator(EmulatorConfig(latency_ms=0.5, per_row_us=0, jitter=0)) as e:
        yield e


def _error(r: httpx.Response, code: int) -> str:
    assert r.status_code == code, r.text
    body = r.json()
    assert body["code"] == code and body["status"] == "error"
    assert set(body) == {"code", "status", "error", "source"}
    message: str = body["error"]
    return message


def test_listening_line_and_urls(emu: EmbeddedEmulator) -> None:
    assert emu.lines[0] == f"{LISTENING_PREFIX}{emu.base_url}"
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", emu.base_url)
    assert emu.wallaroo_url == f"{emu.base_url}/v1/api/pipelines/infer/ccfraud-1/ccfraud"
    assert any(emu.wallaroo_url in line for line in emu.lines[1:])
    assert httpx.get(f"{emu.base_url}/health").status_code == 200


def test_pandas_records_round_trip(emu: EmbeddedEmulator) -> None:
    m = _matrix(10)
    r = httpx.post(emu.wallaroo_url, content=_records(m), headers={"Content-Type": RECORDS})
    assert r.status_code == 200, r.text
    out = r.json()
    assert len(out) == 10
    first = out[0]
    assert set(first) == {"time", "in", "out", "anomaly", "metadata"}
    assert abs(first["time"] - time.time() * 1000) < 60_000
    assert len({rec["time"] for rec in out}) == 1  # one time per request
    assert first["in"]["tensor"] == pytest.approx(m[0].astype(np.float64).tolist())
    assert first["anomaly"] == {"count": 0}
    meta = first["metadata"]
    assert set(meta) == {"last_model", "pipeline_version", "elapsed", "dropped", "partition"}
    assert orjson.loads(meta["last_model"])["model_name"] == "ccfraud"
    ser_ns, step_ns = meta["elapsed"]
    assert ser_ns > 0 and step_ns >= 400_000  # the step includes the 0.5 ms service time
    scores = [rec["out"]["dense_1"][0] for rec in out]
    assert scores == pytest.approx(predict(m.astype(np.float64)).tolist(), abs=1e-9)


@pytest.mark.parametrize("path", ["/pipelines/ccfraud", "/infer"])
def test_internal_and_edge_urls(emu: EmbeddedEmulator, path: str) -> None:
    r = httpx.post(emu.base_url + path, content=_records(_matrix(3)), headers={"Content-Type": "application/json"})
    assert r.status_code == 200 and len(r.json()) == 3


def test_dataset_query_flattens_and_excludes_metadata(emu: EmbeddedEmulator) -> None:
    r = httpx.post(emu.wallaroo_url + "?dataset[]=*&dataset.exclude[]=metadata&dataset.separator=.",
                   content=_records(_matrix(2)), headers={"Content-Type": RECORDS})
    assert r.status_code == 200
    assert set(r.json()[0]) == {"time", "in.tensor", "out.dense_1", "anomaly.count"}
    r = httpx.post(emu.wallaroo_url, params={"dataset.separator": "."}, content=_records(_matrix(2)))
    assert "metadata.elapsed" in r.json()[0]


@pytest.mark.parametrize(("query", "keys"), [
    ("dataset[]=out", {"out"}),
    ("dataset[]=time&dataset[]=out&dataset.separator=.", {"time", "out.dense_1"}),
    ("dataset[]=time&dataset[]=out&dataset[]=metadata.elapsed", {"time", "out", "metadata"}),
    ("dataset[]=*&dataset.exclude[]=in&dataset.exclude[]=metadata", {"time", "out", "anomaly"}),
])
def test_dataset_selects_the_answers_fields(emu: EmbeddedEmulator, query: str, keys: set[str]) -> None:
    """``dataset[]`` is the fields to include (the SDK's OpenAPI spec), as the engine honours it: the answer
    carries only those, so its size and serialisation are the engine's for a scenario that trims answers."""
    m = _matrix(3)
    r = httpx.post(f"{emu.wallaroo_url}?{query}", content=_records(m), headers={"Content-Type": RECORDS})
    assert r.status_code == 200, r.text
    rows = r.json()
    assert len(rows) == 3 and all(set(row) == keys for row in rows)
    if "metadata" in keys:
        assert set(rows[0]["metadata"]) == {"elapsed"} and len(rows[0]["metadata"]["elapsed"]) == 2
    score = rows[1]["out.dense_1"] if "out.dense_1" in keys else rows[1]["out"]["dense_1"]
    assert score == pytest.approx([predict(m.astype(np.float64))[1]], abs=1e-6)
    arrow = httpx.post(f"{emu.wallaroo_url}?{query}", content=_arrow(m),
                       headers={"Content-Type": ARROW, "Accept": ARROW})
    table = pa.ipc.open_file(pa.py_buffer(arrow.content)).read_all()
    assert set(table.column_names) == keys and table.num_rows == 3


def test_arrow_in_arrow_out(emu: EmbeddedEmulator) -> None:
    m = _matrix(25)
    r = httpx.post(emu.wallaroo_url, content=_arrow(m), headers={"Content-Type": ARROW, "Accept": ARROW})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == ARROW
    assert r.content[:6] == b"ARROW1"
    table = pa.ipc.open_file(pa.py_buffer(r.content)).read_all()
    assert table.num_rows == 25
    schema = table.schema
    assert schema.field("time").type == pa.int64()
    assert schema.field("in").type == pa.struct([("tensor", pa.list_(pa.float32()))])
    assert schema.field("out").type == pa.struct([("dense_1", pa.list_(pa.float32()))])
    assert schema.field("anomaly").type == pa.struct([("count", pa.uint32())])
    meta = schema.field("metadata").type
    assert [meta.field(i).name for i in range(meta.num_fields)] == [
        "last_model", "pipeline_version", "elapsed", "dropped", "partition"]
    assert meta.field("elapsed").type == pa.list_(pa.uint64())
    rows = table.to_pylist()
    assert rows[3]["in"]["tensor"] == pytest.approx(m[3].tolist())
    expected = predict(m.astype(np.float64))
    assert [row["out"]["dense_1"][0] for row in rows] == pytest.approx(expected.tolist(), abs=1e-6)


def test_arrow_in_json_out_and_json_in_arrow_out(emu: EmbeddedEmulator) -> None:
    r = httpx.post(emu.wallaroo_url, content=_arrow(_matrix(4)), headers={"Content-Type": ARROW})
    assert r.status_code == 200 and len(r.json()) == 4
    r = httpx.post(emu.wallaroo_url + "?dataset.separator=.", content=_records(_matrix(4)),
                   headers={"Content-Type": RECORDS, "Accept": ARROW})
    table = pa.ipc.open_file(pa.py_buffer(r.content)).read_all()
    assert table.num_rows == 4 and "out.dense_1" in table.column_names


@pytest.mark.parametrize(("body", "content_type", "words"), [
    (b"not json", RECORDS, "invalid JSON"),
    (b'{"tensor": [1]}', RECORDS, "JSON array"),
    (b'[{"x": [1, 2]}]', RECORDS, "tensor"),
    (orjson.dumps([{"tensor": [0.0] * 28}]), RECORDS, "29"),
    (orjson.dumps([{"tensor": [0.0] * 28 + [None]}]), RECORDS, "null"),
    (b"[]", RECORDS, "no rows"),
    (b"ARROW1 but not really", ARROW, "Arrow"),
])
def test_bad_input_is_400(emu: EmbeddedEmulator, body: bytes, content_type: str, words: str) -> None:
    r = httpx.post(emu.wallaroo_url, content=body, headers={"Content-Type": content_type})
    assert words in _error(r, 400)


def test_arrow_with_nulls_or_wrong_column_is_400(emu: EmbeddedEmulator) -> None:
    values = pa.array([1.0] * 28 + [None], pa.float32())
    table = pa.table({"tensor": pa.FixedSizeListArray.from_arrays(values, 29)})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema) as w:
        w.write_table(table)
    r = httpx.post(emu.wallaroo_url, content=sink.getvalue().to_pybytes(), headers={"Content-Type": ARROW})
    assert "null" in _error(r, 400)
    other = pa.table({"features": [1.0]})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, other.schema) as w:
        w.write_table(other)
    r = httpx.post(emu.wallaroo_url, content=sink.getvalue().to_pybytes(), headers={"Content-Type": ARROW})
    assert "tensor" in _error(r, 400)


def test_an_arrow_ipc_stream_is_refused_the_engine_takes_a_file(emu: EmbeddedEmulator) -> None:
    m = _matrix(3)
    table = pa.table({"tensor": pa.FixedSizeListArray.from_arrays(pa.array(m.ravel()), 29)})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    r = httpx.post(emu.wallaroo_url, content=sink.getvalue().to_pybytes(), headers={"Content-Type": ARROW})
    assert "not an Arrow IPC file" in _error(r, 400)
    assert r.json()["source"] == "engine"
    ok = httpx.post(emu.wallaroo_url, content=_arrow(m), headers={"Content-Type": ARROW})  # the same as a file
    assert ok.status_code == 200 and len(ok.json()) == 3


@pytest.mark.parametrize("path", ["/v1/api/pipelines/infer/ccfraud-2/ccfraud",
                                  "/v1/api/pipelines/infer/ccfraud-1/other", "/pipelines/other"])
def test_unknown_deployment_or_pipeline_is_404(emu: EmbeddedEmulator, path: str) -> None:
    r = httpx.post(emu.base_url + path, content=_records(_matrix(1)))
    assert _error(r, 404) == "Deployment not found"


def test_unknown_path_is_404_and_listings_work(emu: EmbeddedEmulator) -> None:
    _error(httpx.get(emu.base_url + "/no/such/thing"), 404)
    pipelines = httpx.get(emu.base_url + "/pipelines").json()["pipelines"]
    assert pipelines[0]["id"] == "ccfraud" and pipelines[0]["status"] == "Running"
    models = httpx.get(emu.base_url + "/models").json()["models"]
    assert set(models[0]) == {"sha", "name", "version", "status"}


def test_token_required_401_then_ok_with_a_keycloak_token() -> None:
    with EmbeddedEmulator(EmulatorConfig(require_token=True, latency_ms=0)) as e:
        body = _records(_matrix(2))
        r = httpx.post(e.wallaroo_url, content=body)
        assert _error(r, 401) == "Jwt is missing"
        assert r.json()["source"] == "platform"
        r = httpx.post(e.wallaroo_url, content=body, headers={"Authorization": "Bearer forged.token.here"})
        assert _error(r, 401)
        tok = httpx.post(f"{e.base_url}/auth/realms/master/protocol/openid-connect/token",
                         data={"grant_type": "client_credentials"}, auth=("api-client", "emulator-secret"))
        assert tok.status_code == 200, tok.text
        auth = {"Authorization": f"Bearer {tok.json()['access_token']}"}
        r = httpx.post(e.wallaroo_url, content=body, headers=auth)
        assert r.status_code == 200 and len(r.json()) == 2
        # the in-cluster URL is not behind the platform gateway
        assert httpx.post(e.base_url + "/pipelines/ccfraud", content=body).status_code == 200


def test_not_running_is_503() -> None:
    with EmbeddedEmulator(EmulatorConfig(startup_s=60)) as e:
        r = httpx.post(e.wallaroo_url, content=_records(_matrix(1)))
        assert "Starting" in _error(r, 503)
        assert httpx.get(e.base_url + "/pipelines").json()["pipelines"][0]["status"] == "Starting"


def _statuses(url: str, n: int) -> list[int]:
    body = _records(_matrix(1))
    with httpx.Client() as client:
        return [client.post(url, content=body).status_code for _ in range(n)]


def test_error_rate_is_seeded_and_counted() -> None:
    cfg = EmulatorConfig(error_rate=0.3, seed=11, latency_ms=0, per_row_us=0)
    with EmbeddedEmulator(cfg) as a, EmbeddedEmulator(cfg) as b:
        first, second = _statuses(a.wallaroo_url, 200), _statuses(b.wallaroo_url, 200)
    assert first == second  # same seed, same sequence
    assert set(first) == {200, 500, 503}
    errors = sum(s != 200 for s in first)
    assert 30 <= errors <= 90  # 0.3 × 200 = 60, far inside ±30 (≈ 4.6 sigma)


@pytest.mark.anyio
async def test_capacity_model_queues_beyond_replicas() -> None:
    """2 slots, 20 ms each, 8 concurrent requests: the last answer comes after ≈ 4 service times."""
    cfg = EmulatorConfig(replicas=2, latency_ms=20, per_row_us=0, jitter=0)
    body = _records(_matrix(1))
    async with EmbeddedEmulator(cfg) as e:
        limits = httpx.Limits(max_connections=8, max_keepalive_connections=8)
        async with httpx.AsyncClient(limits=limits) as client:
            latencies: list[float] = []

            async def one() -> None:
                t0 = time.perf_counter()
                r = await client.post(e.wallaroo_url, content=body)
                assert r.status_code == 200
                latencies.append(time.perf_counter() - t0)

            for _ in range(2):  # first round opens the 8 connections; the second is measured
                latencies.clear()
                t0 = time.perf_counter()
                async with anyio.create_task_group() as tg:
                    for _ in range(8):
                        tg.start_soon(one)
                wall = time.perf_counter() - t0
    assert 0.075 <= wall <= 0.200, wall
    latencies.sort()
    assert latencies[0] < 0.040  # the first pair is served at once
    assert latencies[-1] >= 0.075  # the last pair waited for three others


def test_h2c_prior_knowledge_and_http1_on_the_same_port() -> None:
    with EmbeddedEmulator(EmulatorConfig(http2=True, latency_ms=0)) as e:
        body = _records(_matrix(3))
        with httpx.Client(http1=False, http2=True) as client:
            r = client.post(e.wallaroo_url, content=body, headers={"Content-Type": RECORDS})
        assert r.http_version == "HTTP/2" and r.status_code == 200 and len(r.json()) == 3
        r = httpx.post(e.wallaroo_url, content=body)
        assert r.http_version == "HTTP/1.1" and r.status_code == 200


def test_embedded_child_is_stopped_even_when_the_block_raises() -> None:
    emu = EmbeddedEmulator(EmulatorConfig())
    with pytest.raises(RuntimeError, match="boom"), emu:
        pid = emu.pid
        assert pid is not None
        raise RuntimeError("boom")
    assert pid is not None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # reaped: gone
    with pytest.raises(RuntimeError):
        _ = emu.base_url


@pytest.mark.parametrize(("args", "words"), [
    (["--error-rate", "1.5"], "--error-rate"),
    (["--latency-ms", "-1"], "--latency-ms"),
    (["--replicas", "0"], "--replicas"),
    (["--host", "0.0.0.0"], "--allow-remote"),
])
def test_serve_rejects_bad_flags_with_one_line(args: list[str], words: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "bench", "serve", *args], capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0]
