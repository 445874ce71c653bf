"""The emulator's faults on the wire, seen from raw sockets and plain httpx against a real `bench serve --fault`."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from prometheus_text import parse

ROOT = Path(__file__).resolve().parents[2]
BODY = json.dumps([{"tensor": [0.1] * 29}]).encode()
REQUEST = (b"POST /infer HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
           % (len(BODY), BODY))


def _port(base: str) -> int:
    return int(base.rsplit(":", 1)[1])


def exchange(base: str, data: bytes = REQUEST, wait_s: float = 1.0) -> tuple[bytes, str]:
    """Send ``data`` on a fresh connection; (bytes read, how it ended: 'eof', 'rst' or 'timeout')."""
    with socket.create_connection(("127.0.0.1", _port(base)), timeout=wait_s) as s:
        s.sendall(data)
        out = b""
        deadline = time.monotonic() + wait_s
        while True:
            s.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                return out, "timeout"
            except ConnectionResetError:
                return out, "rst"
            if not chunk:
                return out, "eof"
            out += chunk


def faults_seen(base: str) -> dict[str, float]:
    fams = parse(httpx.get(f"{base}/metrics", timeout=10).text)
    return {labels["fault"]: v for _, labels, v in fams["emulator_faults_injected_total"].samples}


def test_stall_answers_nothing_and_keeps_the_connection(fault_emulator: Callable[..., str]) -> None:
    base = fault_emulator("stall:1")
    out, end = exchange(base, wait_s=0.5)
    assert (out, end) == (b"", "timeout")
    assert faults_seen(base) == {"stall": 1}
    assert httpx.get(f"{base}/health", timeout=5).status_code == 200  # /health and /metrics are never faulted


def test_reset_is_a_tcp_rst(fault_emulator: Callable[..., str]) -> None:
    base = fault_emulator("reset:1")
    assert exchange(base) == (b"", "rst")


def test_accept_reset_resets_before_reading(fault_emulator: Callable[..., str]) -> None:
    base = fault_emulator("accept_reset:1")
    # nothing sent: the reset comes, at the first read or already while connecting (a quick server)
    with pytest.raises(ConnectionResetError), socket.create_connection(("127.0.0.1", _port(base)), timeout=2) as s:
        s.settimeout(2)
        s.recv(10)


def test_garbage_is_not_http(fault_emulator: Callable[..., str]) -> None:
    base = fault_emulator("garbage:1:bytes=200")
    out, end = exchange(base)
    assert len(out) == 200 and not out.startswith(b"HTTP/") and end == "eof"


def test_bad_length_promises_more_than_it_sends(fault_emulator: Callable[..., str]) -> None:
    base = fault_emulator("bad_length:1:extra=50")
    out, end = exchange(base, wait_s=0.5)
    head, _, body = out.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    length = int(next(line.split(b":")[1] for line in lines if line.lower().startswith(b"content-length")))
    assert length == len(body) + 50 and end == "timeout"
    json.loads(body)  # the body itself is whole


def test_bursts_and_retry_after(fault_emulator: Callable[..., str]) -> None:
    base = fault_emulator("429:1:burst=3:retry_after=7")
    r = httpx.post(f"{base}/infer", content=BODY, headers={"content-type": "application/json"}, timeout=5)
    assert r.status_code == 429 and r.headers["retry-after"] == "7" and "error" in r.json()
    base = fault_emulator("5xx:1:status=502")
    r = httpx.post(f"{base}/infer", content=BODY, headers={"content-type": "application/json"}, timeout=5)
    assert r.status_code == 502


@pytest.mark.parametrize("spec", ["chunked:1:chunks=3", "slow:1:ms=200", "huge:1:bytes=300000"])
def test_shaped_answers_are_still_valid(fault_emulator: Callable[..., str], spec: str) -> None:
    base = fault_emulator(spec)
    t0 = time.monotonic()
    with httpx.Client(timeout=10) as c:
        r = c.post(f"{base}/infer", content=BODY, headers={"content-type": "application/json"})
    took = time.monotonic() - t0
    assert r.status_code == 200
    records = r.json()
    assert len(records) == 1 and len(records[0]["out"]["dense_1"]) == 1
    if spec.startswith("chunked"):
        assert r.headers["transfer-encoding"] == "chunked"
    if spec.startswith("slow"):
        assert took >= 0.18  # ten pieces, 20 ms apart
    if spec.startswith("huge"):
        assert len(r.content) == 300000


def test_close_after_n_answers(fault_emulator: Callable[..., str]) -> None:
    base = fault_emulator("close_after:2")
    out, end = exchange(base, REQUEST * 3, wait_s=2)
    assert out.count(b"HTTP/1.1 200") == 2 and end == "eof" and b"connection: close" not in out.lower()


def test_same_seed_same_faults(serve_emulator: Callable[..., str]) -> None:
    """Sequential requests against two emulators with the same seed see the same faults, another seed others."""

    def outcomes(seed: str) -> list[str]:
        base = serve_emulator("--fault", "5xx:0.2:burst=2,429:0.1:burst=1,chunked:0.2", "--seed", seed)
        seen = []
        with httpx.Client(timeout=5) as c:
            for _ in range(40):
                r = c.post(f"{base}/infer", content=BODY, headers={"content-type": "application/json"})
                seen.append(f"{r.status_code}{'c' if r.headers.get('transfer-encoding') else ''}")
        return seen

    a = outcomes("5")
    assert a == outcomes("5")
    assert a != outcomes("6")
    assert {"503", "429", "200c", "200"} <= set(a)


def test_http2_faults_run_inside_hypercorn(fault_emulator: Callable[..., str]) -> None:
    base = fault_emulator("5xx:0.5:burst=1,huge:0.5:bytes=100000", "--http2")
    with httpx.Client(http1=False, http2=True, timeout=5) as c:  # h2c with prior knowledge
        statuses = []
        for _ in range(20):
            r = c.post(f"{base}/infer", content=BODY, headers={"content-type": "application/json"})
            assert r.http_version == "HTTP/2"
            statuses.append(r.status_code)
            if r.status_code == 200:
                r.json()
    assert {200, 503} <= set(statuses)
    seen = faults_seen(base)
    assert seen["5xx"] == statuses.count(503) and seen["5xx"] + seen.get("huge", 0) <= 20


def test_bad_fault_flag_is_one_line_exit_2() -> None:
    proc = subprocess.run([sys.executable, "-m", "bench", "serve", "--port", "0", "--fault", "stall:0.5,reset:0.9"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "--fault" in proc.stderr and "add up to 1.4" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_scenario_faults_table_reaches_the_embedded_emulator(tmp_path: Path) -> None:
    """`[emulator] faults` as a table in a scenario: the embedded emulator injects it and the run counts it."""
    scenario = (ROOT / "scenarios" / "quickstart.toml").read_text()
    scenario = scenario.replace("[emulator]", '[emulator]\nfaults = { "5xx" = { p = 0.05, burst = 2 } }', 1)
    scenario = scenario.replace('"../data/', f'"{ROOT}/data/')
    path = tmp_path / "s.toml"
    path.write_text(scenario)
    proc = subprocess.run([sys.executable, "-m", "bench", "run", str(path), "--set", 'load.duration="1s"',
                           "--set", 'load.warmup="0s"', "--json", "--quiet", "--out", str(tmp_path / "r.arrow")],
                          cwd=ROOT, capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["errors_by_kind"].get("http_error:503", 0) > 0
    assert set(summary["errors_by_kind"]) == {"http_error:503"}
    bad = tmp_path / "bad.toml"
    bad.write_text(scenario.replace('p = 0.05', 'p = 5'))
    proc = subprocess.run([sys.executable, "-m", "bench", "run", str(bad)], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "emulator.faults" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.anyio
async def test_fault_server_in_process() -> None:
    """The fault server on the test's own event loop (no child process): what the fault_emulator fixture serves."""
    from bench.emulator.app import build_app
    from bench.emulator.config import EmulatorConfig
    from bench.emulator.faults import plan_from_config
    from bench.emulator.faultserver import running_fault_server
    from bench.emulator.server import bind_socket

    app = build_app(EmulatorConfig())
    plan = plan_from_config("5xx:0.5:burst=1", seed=11, on_fault=app.ctx.metrics.fault)
    sock = bind_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    async with running_fault_server(app, plan, sock), httpx.AsyncClient(timeout=5) as client:
        statuses = [(await client.post(f"http://127.0.0.1:{port}/infer", content=BODY,
                                       headers={"content-type": "application/json"})).status_code
                    for _ in range(30)]
        metrics = parse((await client.get(f"http://127.0.0.1:{port}/metrics")).text)
    assert set(statuses) == {200, 503}
    injected = {labels["fault"]: v for _, labels, v in metrics["emulator_faults_injected_total"].samples}
    assert injected == {"5xx": statuses.count(503)}
    twin = plan_from_config("5xx:0.5:burst=1", seed=11)
    assert [503 if twin.decide("/infer").fault else 200 for _ in range(30)] == statuses
