"""A server that accepts and never answers is not a clean run: through the real CLI on loopback, the requests
in flight at the end are errors (kind 'abandoned') in the JSON summary, and an error-rate SLO fails."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def silent_server() -> Iterator[int]:
    """Accepts connections on 127.0.0.1 and never answers; always closed when the test ends."""
    srv = socket.create_server(("127.0.0.1", 0), backlog=64)
    srv.settimeout(0.2)
    stop = threading.Event()
    held: list[socket.socket] = []

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            held.append(conn)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield srv.getsockname()[1]
    finally:
        stop.set()
        t.join(5)
        for c in held:
            c.close()
        srv.close()


def bench(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "GITHUB_STEP_SUMMARY"}
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env=env)


@pytest.mark.slow  # over 5 s of real processes: in CI's slow step, not the default run
def test_never_answering_server_counts_in_flight_as_errors(silent_server: int, tmp_path: Path) -> None:
    body = tmp_path / "body.json"
    body.write_text('{"x": 1}')
    url = f"http://127.0.0.1:{silent_server}/x"
    proc = bench("run", "--url", url, "--body", str(body), "-c", "8", "-d", "1s", "-q", "--json",
                 "--out", str(tmp_path / "r.arrow"))
    assert proc.stdout, proc.stderr
    s = json.loads(proc.stdout)
    assert s["ok"] == 0 and s["errors"] >= 8 and s["requests"] == s["errors"], s
    assert s["errors_by_kind"].get("abandoned", 0) >= 8 and s["error_rate"] == 1.0
    assert s["latency_ms"]["p50"] is None  # no answer, no latency: missing, not 0
    gated = bench("run", "--url", url, "--body", str(body), "-c", "8", "-d", "1s", "-q",
                  "--set", "slo.error_rate=0.01", "--out", str(tmp_path / "g.arrow"))
    assert gated.returncode != 0 and "error_rate" in gated.stdout, gated.stdout + gated.stderr
    shown = bench("report", str(tmp_path / "r.arrow"))
    assert shown.returncode == 0 and "abandoned" in shown.stdout and "100.00 %" in shown.stdout
