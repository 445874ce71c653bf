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
