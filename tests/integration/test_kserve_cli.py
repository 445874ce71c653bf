"""`kind = "kserve"` with the real `bench run` CLI against the emulator's V2 routes, and [server_metrics] faults."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.ipc as ipc
import pytest

from tests.integration.locust_cluster import free_port, scenario_copy, served_asgi

ROOT = Path(__file__).resolve().parents[2]
SHORT = ["--set", 'load.duration="2s"', "--set", 'load.warmup="0.5s"', "--json", "--quiet"]


def bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def variant(tmp_path: Path, *edits: tuple[str, str]) -> Path:
    return scenario_copy("kserve.toml", tmp_path / "kserve.toml", *edits)


def extra(out: Path) -> dict[str, object]:
    meta = json.loads(ipc.open_file(str(out)).schema.metadata[b"bench.report"])
    result: dict[str, object] = meta["extra"]
    return result


def test_kserve_scenario_on_embedded_emulator(tmp_path: Path) -> None:
    out = tmp_path / "r.arrow"
    proc = bench("run", "scenarios/kserve.toml", *SHORT, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    s = json.loads(proc.stdout)
    assert s["requests"] > 50 and s["errors"] == 0 and s["ok"] == s["requests"]
    assert s["rows_per_s"] == pytest.approx(s["rps"] * 1001 / 101, rel=0.03)  # right rows came back
    assert s["server_ms"] is not None  # the emulator's /metrics was scraped
    sm = extra(out)["server_metrics"]
    assert isinstance(sm, dict) and sm["scrapes"] >= 2 and sm["scrape_errors"] == 0


@pytest.mark.slow  # a real run of a few seconds: the default suite keeps the scenario's own
def test_binary_tensor_extension_on_emulator(tmp_path: Path) -> None:
    proc = bench("run", str(variant(tmp_path, ('datatype = "FP32"', 'datatype = "FP32"\nbinary = true'))), *SHORT,
                 "--out", str(tmp_path / "r.arrow"))  # (never the checkout's reports/)
    assert proc.returncode == 0, proc.stderr
    s = json.loads(proc.stdout)
    assert s["errors"] == 0 and s["ok"] > 50


@pytest.mark.slow  # a real run of a few seconds: the default suite keeps the scenario's own
def test_columns_layout_bytes_int64_fp64_on_echo_model(tmp_path: Path) -> None:
    """One input per column (BYTES, INT64, FP64) against the emulator's echo model: every answer validated."""
    data = tmp_path / "mixed.arrow"
    n = 50
    table = pa.table({"word": pa.array([f"w{i}" for i in range(n)]), "count": pa.array(range(n), pa.int64()),
                      "score": pa.array([i / 7 for i in range(n)], pa.float64())})
    with ipc.new_file(str(data), table.schema) as w:
        w.write_table(table)
    path = tmp_path / "cols.toml"
    path.write_text(f"""name = "cols"
[target]
kind = "kserve"
url = "embedded"
model_name = "echo"
layout = "columns"
[target.inputs.score]
datatype = "FP32"
[data]
path = "{data}"
column = "word"  # the reader checks that this column exists; layout = "columns" sends every column
rows_per_request = 4
[load]
concurrency = 2
""")
    proc = bench("run", str(path), *SHORT, "--out", str(tmp_path / "r.arrow"))
    assert proc.returncode == 0, proc.stderr
    s = json.loads(proc.stdout)
    assert s["errors"] == 0 and s["ok"] > 20
    assert s["rows_per_s"] == pytest.approx(s["rps"] * n / 13, rel=0.05)  # 12 bodies of 4 rows, one of 2


@pytest.mark.parametrize(("edit", "needle"), [
    (('input_name = "tensor"', 'input_name = "features"'), "input 'features'"),
    (('datatype = "FP32"', 'datatype = "INT64"'), "input 'tensor'"),
    (('datatype = "FP32"', 'datatype = "FP32"\nshape = [-1, 29, 1]'), "shape mismatch"),
    (('model_version = "1"', 'model_version = "7"'), "not found"),
])
def test_model_disagreeing_with_data_exit_2_one_line(tmp_path: Path, edit: tuple[str, str], needle: str) -> None:
    out = tmp_path / "never.arrow"
    proc = bench("run", str(variant(tmp_path, edit)), *SHORT, "--out", str(out))
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("bench: error:") and needle in last and "kserve.toml" in last, last
    assert not out.exists()  # no load, no report


@pytest.mark.slow  # a real run of a few seconds: the default suite keeps the scenario's own
def test_metrics_url_down_is_counted_not_fatal(tmp_path: Path) -> None:
    out = tmp_path / "r.arrow"
    path = variant(tmp_path, ('url = "embedded"            # the emulator\'s Prometheus',
                              f'url = "http://127.0.0.1:{free_port()}/metrics" #'))
    proc = bench("run", str(path), *SHORT, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    s = json.loads(proc.stdout)
    assert s["errors"] == 0 and s["ok"] > 50 and s["server_ms"] is None  # no server figure: shown as missing
    sm = extra(out)["server_metrics"]
    assert isinstance(sm, dict) and sm["scrapes"] == 0 and sm["scrape_errors"] >= 2
    assert "Connect" in str(sm["first_error"])


@pytest.mark.slow  # a real run of a few seconds: the default suite keeps the scenario's own
def test_non_prometheus_metrics_text_is_counted_not_fatal(tmp_path: Path,
                                                          serve_emulator: Callable[..., str]) -> None:
    """A URL answering JSON (the emulator's V2 server metadata) is not Prometheus text: counted, run goes on."""
    base = serve_emulator()
    out = tmp_path / "r.arrow"
    path = variant(tmp_path, ('url = "embedded"            # the emulator\'s Prometheus', f'url = "{base}/v2" #'))
    proc = bench("run", str(path), *SHORT, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    sm = extra(out)["server_metrics"]
    assert isinstance(sm, dict) and sm["scrapes"] == 0 and sm["scrape_errors"] >= 2
    assert "PromError" in str(sm["first_error"])


@pytest.mark.slow  # a real run of a few seconds: the default suite keeps the scenario's own
def test_processes_run_parent_preflights_and_scrapes(tmp_path: Path) -> None:
    """--processes 2: the parent checks the model once and scrapes once; the merged report has server figures."""
    out = tmp_path / "r.arrow"
    proc = bench("run", "scenarios/kserve.toml", *SHORT, "--processes", "2", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    s = json.loads(proc.stdout)
    assert s["errors"] == 0 and s["ok"] > 50 and s["server_ms"] is not None
    sm = extra(out)["server_metrics"]
    assert isinstance(sm, dict) and sm["scrapes"] >= 2
    bad = variant(tmp_path, ('datatype = "FP32"', 'datatype = "FP64"'))
    refused = bench("run", str(bad), *SHORT, "--processes", "2")
    assert refused.returncode == 2 and "datatype mismatch" in refused.stderr.strip().splitlines()[-1]


@pytest.mark.slow  # a real run of a few seconds: the default suite keeps the scenario's own
def test_v2_error_bodies_counted_with_the_servers_message(tmp_path: Path) -> None:
    proc = bench("run", "scenarios/kserve.toml", *SHORT, "--set", "emulator.error_rate=0.1",
                 "--out", str(tmp_path / "r.arrow"))
    s = json.loads(proc.stdout)
    assert s["requests"] == s["ok"] + s["errors"] and s["errors"] > 0
    assert set(s["errors_by_kind"]) == {"http_error:500"}
    (top,) = s["top_errors"]
    assert top["count"] == s["errors"] and "model ccfraud failed (injected error)" in top["sample"]


class Gateway:
    """A token-checking gateway in front of the emulator's whole app: 401 unless ``Authorization: Bearer TOKEN``;
    notes every call as (method, path, token right)."""

    def __init__(self, token: str) -> None:
        from bench.emulator.app import build_app
        from bench.emulator.config import EmulatorConfig

        self.app = build_app(EmulatorConfig())
        self.want = f"Bearer {token}".encode()
        self.calls: list[tuple[str, str, bool]] = []

    async def __call__(self, scope: MutableMapping[str, Any], receive: Callable[[], Awaitable[Any]],
                       send: Callable[[Any], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            return
        ok = dict(scope["headers"]).get(b"authorization") == self.want
        self.calls.append((scope["method"], scope["path"], ok))
        if ok:
            await self.app(scope, receive, send)
            return
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b'{"error": "a valid bearer token is required"}'})


def gateway_scenario(tmp_path: Path, base: str) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(f"""name = "kserve-behind-gateway"
[target]
kind = "kserve"
url = "{base}"
model_name = "ccfraud"
model_version = "1"
input_name = "tensor"
datatype = "FP32"
outputs = ["dense_1"]
[auth]
kind = "static"
token_env = "BENCH_TEST_KSERVE_TOKEN"
[data]
path = "{ROOT}/data/ccfraud_1k.df.json"
rows_per_request = 10
[load]
concurrency = 2
""")
    return path


def run_with_token(*args: str, token: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "BENCH_TEST_KSERVE_TOKEN": token})


@pytest.mark.slow  # seconds of real processes: in CI's slow step, out of the default run
def test_preflight_sends_the_auth_token_to_a_gateway(tmp_path: Path) -> None:
    """A V2 server behind a bearer-token gateway: the preflight's ready and metadata calls carry [auth]'s token
    (before, they went bare and the run failed with 401s), the run succeeds, and the token is never written."""
    token = f"kst-{secrets.token_hex(16)}"
    gate = Gateway(token)
    out = tmp_path / "r.arrow"
    html = tmp_path / "r.html"
    with served_asgi(gate) as base:
        proc = run_with_token("run", str(gateway_scenario(tmp_path, base)), *SHORT, "--out", str(out), token=token)
    assert proc.returncode == 0, proc.stderr
    assert bench("report", str(out), "--html", str(html)).returncode == 0
    s = json.loads(proc.stdout)
    assert s["ok"] > 20 and s["errors"] == 0
    gets = [(path, ok) for method, path, ok in gate.calls if method == "GET"]
    assert ("/v2/health/ready", True) in gets and ("/v2/models/ccfraud/versions/1/ready", True) in gets
    assert ("/v2/models/ccfraud/versions/1", True) in gets  # the metadata, checked against the data
    assert all(ok for _, _, ok in gate.calls), [c for c in gate.calls if not c[2]]
    table = ipc.open_file(str(out)).read_all()
    written = [proc.stdout, proc.stderr, html.read_text(), repr(table.schema.metadata),
               *(repr(c.to_pylist()) for c in table.columns)]
    assert not any(token in text for text in written)
    assert token.encode() not in out.read_bytes()


def test_preflight_wrong_token_fails_at_once_without_echoing_it(tmp_path: Path) -> None:
    """A refused credential on a ready check is not 'not ready yet': one line at once, no load, no token."""
    gate = Gateway(f"kst-{secrets.token_hex(16)}")
    wrong = f"kst-{secrets.token_hex(16)}"
    with served_asgi(gate) as base:
        proc = run_with_token("run", str(gateway_scenario(tmp_path, base)), *SHORT, token=wrong)
    assert proc.returncode == 3, proc.stderr  # run invalid: nothing measured
    last = proc.stderr.strip().splitlines()[-1]
    assert "refused the credentials (HTTP 401)" in last and "Traceback" not in proc.stderr, proc.stderr
    assert wrong not in proc.stdout + proc.stderr
    assert not any(method == "POST" for method, _, _ in gate.calls)  # no load was sent


class KeyGateway(Gateway):
    """A gateway that wants an ``X-Api-Key`` as well as the bearer token."""

    def __init__(self, token: str, key: str) -> None:
        super().__init__(token)
        self.key = key.encode()

    async def __call__(self, scope: MutableMapping[str, Any], receive: Callable[[], Awaitable[Any]],
                       send: Callable[[Any], Awaitable[None]]) -> None:
        if scope["type"] == "http" and dict(scope["headers"]).get(b"x-api-key") != self.key:
            scope = {**scope, "headers": [h for h in scope["headers"] if h[0] != b"authorization"]}  # → 401
        await super().__call__(scope, receive, send)


def test_token_env_and_headers_env_reach_a_kserve_gateway(tmp_path: Path) -> None:
    """docs/secrets.md and docs/kserve.md: [target] token_env and headers_env carry secrets for any target; kind =
    'kserve' refused both as unknown keys, so a V2 server behind an API-key gateway could not be loaded."""
    token, key = f"kst-{secrets.token_hex(16)}", f"ksk-{secrets.token_hex(16)}"
    gate = KeyGateway(token, key)
    out = tmp_path / "r.arrow"
    with served_asgi(gate) as base:
        path = gateway_scenario(tmp_path, base)
        path.write_text(path.read_text().replace(
            '[auth]\nkind = "static"\ntoken_env = "BENCH_TEST_KSERVE_TOKEN"\n',
            'token_env = "BENCH_TEST_KSERVE_TOKEN"\nheaders_env = { "X-Api-Key" = "BENCH_TEST_KSERVE_KEY" }\n'))
        proc = subprocess.run([sys.executable, "-m", "bench", "run", str(path), *SHORT, "--out", str(out)], cwd=ROOT,
                              capture_output=True, text=True, timeout=120,
                              env={**os.environ, "BENCH_TEST_KSERVE_TOKEN": token, "BENCH_TEST_KSERVE_KEY": key})
    assert proc.returncode == 0, proc.stderr
    s = json.loads(proc.stdout)
    assert s["ok"] > 20 and s["errors"] == 0
    assert ("GET", "/v2/health/ready", True) in gate.calls and all(ok for _, _, ok in gate.calls)
    table = ipc.open_file(str(out)).read_all()
    written = [proc.stdout, proc.stderr, repr(table.schema.metadata), *(repr(c.to_pylist()) for c in table.columns)]
    assert not any(secret in text for secret in (token, key) for text in written)


# --- audit kserve #8-#13: data the datatype cannot hold, unsigned/binary columns, GET /v2, outputs, parameters,
# scalar and binary answers -------------------------------------------------------------------------------------

def echo_scenario(tmp_path: Path, table: pa.Table, target: str, *, url: str = "embedded", requests: int = 6) -> Path:
    """A scenario sending ``table`` (as Parquet) to the echo model, one input per column, 2 rows a request."""
    import pyarrow.parquet as pq

    data = tmp_path / "data.parquet"
    pq.write_table(table, data)
    path = tmp_path / "echo.toml"
    path.write_text(f"""name = "echo"
[target]
kind = "kserve"
url = "{url}"
model_name = "echo"
layout = "columns"
{target}
[data]
path = "{data}"
column = "{table.column_names[0]}"
rows_per_request = 2
[load]
concurrency = 1
requests = {requests}
""")
    return path


@pytest.mark.parametrize(("values", "datatype", "needle"), [
    (pa.array([1.0, 300.0, -1.0]), "UINT8", "row 1: 300.0 is out of range for UINT8 (0 to 255)"),
    (pa.array([1.0, 2.0, 1e6]), "FP16", "row 2: 1000000.0 is out of range for FP16 (largest 65504)"),
    (pa.array([3, -5, 2**40], pa.int64()), "UINT64",
     "row 1: -5 is out of range for UINT64 (0 to 18446744073709551615)"),
    (pa.array([3, 4, 2**40], pa.int64()), "INT32",
     "row 2: 1099511627776 is out of range for INT32 (-2147483648 to 2147483647)"),
    (pa.array([0.0, 1.0, 0.5]), "BOOL", "row 2: 0.5 is not 0 or 1: cannot be sent as BOOL"),
])
def test_values_the_datatype_cannot_hold_exit_2_one_line(tmp_path: Path, values: pa.Array, datatype: str,
                                                         needle: str) -> None:
    """They were wrapped (300 → 44), made null (FP16 1e6, after a numpy RuntimeWarning on stderr) or true, sent,
    and counted ok by the echo model."""
    path = echo_scenario(tmp_path, pa.table({"x": values}), f'[target.inputs.x]\ndatatype = "{datatype}"')
    out = tmp_path / "never.arrow"
    proc = bench("run", str(path), "--quiet", "--out", str(out))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr and "Warning" not in proc.stderr, lines
    assert lines[0] == f"bench: error: {path}: target.inputs.x.datatype: input 'x': {needle}"
    assert not out.exists()


def test_unsigned_and_binary_columns_reach_the_echo_model(tmp_path: Path) -> None:
    """uint8..64 columns had no V2 datatype, and binary columns were refused even with binary = true (as 'not
    UTF-8 text'); now they are UINT8..64 and BYTES, and every answer is ok. A JSON body still refuses the binary
    column, naming its type and the way out."""
    n = 12
    table = pa.table({"u8": pa.array([i * 20 for i in range(n)], pa.uint8()),
                      "u16": pa.array([60000 + i for i in range(n)], pa.uint16()),
                      "u32": pa.array([2**32 - 1 - i for i in range(n)], pa.uint32()),
                      "u64": pa.array([2**64 - 1 - i for i in range(n)], pa.uint64()),
                      "blob": pa.array([bytes([i, 0xff, 0x00]) for i in range(n)], pa.binary())})
    proc = bench("run", str(echo_scenario(tmp_path, table, "binary = true")), "--json", "--quiet",
                 "--out", str(tmp_path / "r.arrow"))
    assert proc.returncode == 0, proc.stderr
    s = json.loads(proc.stdout)
    assert s["requests"] == 6 and s["ok"] == 6 and s["errors"] == 0, s
    proc = bench("run", str(echo_scenario(tmp_path, table, "binary = false")), "--quiet")
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "data.parquet: blob: a binary column (Arrow type binary)" in last and "binary = true" in last, last
    assert "UTF-8" not in last


class Front:
    """The emulator's app behind a hook: ``hook(method, path, headers, body)`` may answer (status, headers, body)
    instead of the emulator; every call is noted as (method, path, headers, body)."""

    def __init__(self, hook: Callable[[str, str, dict[bytes, bytes], bytes],
                                      tuple[int, list[tuple[bytes, bytes]], bytes] | None]) -> None:
        from bench.emulator.app import build_app
        from bench.emulator.config import EmulatorConfig

        self.app = build_app(EmulatorConfig())
        self.hook = hook
        self.calls: list[tuple[str, str, dict[bytes, bytes], bytes]] = []

    async def __call__(self, scope: MutableMapping[str, Any], receive: Callable[[], Awaitable[Any]],
                       send: Callable[[Any], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = dict(scope["headers"])
        self.calls.append((scope["method"], scope["path"], headers, body))
        answer = self.hook(scope["method"], scope["path"], headers, body)
        if answer is None:
            sent = False

            async def replay() -> dict[str, Any]:
                nonlocal sent
                if sent:
                    return {"type": "http.disconnect"}
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}

            await self.app(scope, replay, send)
            return
        status, extra, content = answer
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-length", str(len(content)).encode()), *extra]})
        await send({"type": "http.response.body", "body": content})


@pytest.mark.parametrize(("answer", "ctype"), [(b"<html><body>Welcome to nginx</body></html>", b"text/html"),
                                                (b'["binary_tensor_data"]', b"application/json")])
def test_get_v2_not_a_json_object_is_one_line_exit_3(tmp_path: Path, answer: bytes, ctype: bytes) -> None:
    """An ingress answering GET /v2 with an HTML page (or JSON that is not an object) crashed the preflight with a
    77-line traceback, exit 1."""
    front = Front(lambda m, p, h, b: (200, [(b"content-type", ctype)], answer) if p == "/v2" else None)
    with served_asgi(front) as base:
        path = fronted(tmp_path, base, ('datatype = "FP32"', 'datatype = "FP32"\nbinary = true'))
        proc = bench("run", str(path), "--quiet", "--out", str(tmp_path / "never.arrow"))
    assert proc.returncode == 3, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr and len(lines) == 1, lines
    assert lines[0] == f"bench: error: GET {base}/v2: not a JSON object (server metadata expected; content-type " \
                       f"{ctype.decode()!r})"
    assert not any(method == "POST" for method, *_ in front.calls)


def test_unknown_output_refused_before_load(tmp_path: Path) -> None:
    """outputs = ["nope"] passed the preflight and every request failed with 400 (exit 3); the metadata declares
    the model's outputs."""
    out = tmp_path / "never.arrow"
    proc = bench("run", str(variant(tmp_path, ('outputs = ["dense_1"]', 'outputs = ["dense_1", "nope"]'))),
                 *SHORT, "--out", str(out))
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "Traceback" not in proc.stderr
    assert last.endswith("kserve.toml: target.outputs: output 'nope': model ccfraud has no such output "
                         "(its outputs: dense_1)"), last
    assert not out.exists()


FAST = ["--set", 'load.duration="1s"', "--set", 'load.warmup="0s"', "--json", "--quiet"]


def fronted(tmp_path: Path, base: str, *edits: tuple[str, str]) -> Path:
    """scenarios/kserve.toml pointed at ``base`` (no [emulator], no [server_metrics]), with text ``edits``."""
    path = variant(tmp_path, ('url = "embedded"   ', f'url = "{base}" #'), *edits)
    text = path.read_text()
    path.write_text(text[:text.index("\n[emulator]")] + "\n")
    return path


def _head(headers: dict[bytes, bytes], body: bytes) -> dict[str, Any]:
    length = headers.get(b"inference-header-content-length")
    result: dict[str, Any] = json.loads(body[:int(length)] if length else body)
    return result


@pytest.mark.slow  # a real run of a few seconds: in CI's slow step
@pytest.mark.parametrize("binary", [False, True])
def test_parameters_reach_the_server_exactly_and_binary_answers_are_ok(tmp_path: Path, binary: bool) -> None:
    """[target] parameters, input_parameters and outputs = [{ name, parameters }] were refused as unknown keys; now
    every request carries them as written. binary_data_output = true makes the emulator answer with the binary
    extension, which the classifier counted bad_response:200: now ok, with the right rows."""
    front = Front(lambda m, p, h, b: None)
    with served_asgi(front) as base:
        path = fronted(tmp_path, base,
                       ('datatype = "FP32"', f'datatype = "FP32"\nbinary = {str(binary).lower()}\n'
                                             'input_parameters = { content_type = "np", note = "é", n = 3 }\n'
                                             'parameters = { binary_data_output = true, priority = 2 }'),
                       ('outputs = ["dense_1"]', 'outputs = [{ name = "dense_1", parameters = { binary_data = true '
                                                 '} }]'))
        proc = bench("run", str(path), *FAST, "--out", str(tmp_path / "r.arrow"))
    assert proc.returncode == 0, proc.stderr
    s = json.loads(proc.stdout)
    assert s["requests"] > 20 and s["ok"] == s["requests"] and s["errors"] == 0, s
    assert s["rows_per_s"] == pytest.approx(s["rps"] * 1001 / 101, rel=0.03)  # the rows of binary answers
    posts = [_head(h, b) for m, p, h, b in front.calls if m == "POST"]
    assert len(posts) >= s["requests"]
    for req in posts:
        assert req["parameters"] == {"binary_data_output": True, "priority": 2}
        assert req["outputs"] == [{"name": "dense_1", "parameters": {"binary_data": True}}]
        (item,) = req["inputs"]
        extra = {"binary_data_size": item["parameters"]["binary_data_size"]} if binary else {}
        assert item["parameters"] == {"content_type": "np", "note": "é", "n": 3, **extra}


def test_scalar_answers_are_ok(tmp_path: Path) -> None:
    """An answer whose output is a scalar (shape []) was counted bad_response:200."""
    scalar = b'{"model_name":"ccfraud","outputs":[{"name":"dense_1","datatype":"FP32","shape":[],"data":[0.5]}]}'
    front = Front(lambda m, p, h, b: (200, [(b"content-type", b"application/json")], scalar) if m == "POST" else None)
    with served_asgi(front) as base:
        path = fronted(tmp_path, base)
        proc = bench("run", str(path), *FAST, "--out", str(tmp_path / "r.arrow"))
    assert proc.returncode == 0, proc.stderr
    s = json.loads(proc.stdout)
    assert s["requests"] > 20 and s["ok"] == s["requests"], s
    assert s["rows_per_s"] == pytest.approx(s["rps"] * 1001 / 101, rel=0.03)  # a scalar answers the rows sent
