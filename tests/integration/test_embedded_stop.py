"""The embedded emulator stops promptly with a request it will never answer in flight: uvicorn waited for such a
handler forever and hypercorn 3 s, so a 1-s run against a stalling target took 6-9 s (the parent's SIGKILL after
5 s) instead of duration + drain (input audit, item 11)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from bench.emulator.config import EmulatorConfig
from bench.emulator.embedded import EmbeddedEmulator

ROOT = Path(__file__).resolve().parents[2]
NEVER_MS = 6e8  # a week, the largest latency_ms allowed: the handler never answers within a test


def _in_progress(base_url: str) -> float:
    """The emulator's in-progress gauge summed over routes (its own /metrics request included)."""
    with urllib.request.urlopen(f"{base_url}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("rest_server_requests_in_progress{") and "/metrics" not in line)


@pytest.mark.parametrize("http2", [False, True], ids=["uvicorn", "hypercorn"])
def test_stop_does_not_wait_for_a_handler_that_never_answers(http2: bool) -> None:
    emu = EmbeddedEmulator(EmulatorConfig(latency_ms=NEVER_MS, http2=http2))
    emu.start()
    try:
        url = urlsplit(emu.wallaroo_url)
        body = b'[{"tensor": [%s]}]' % b", ".join([b"0.5"] * 29)  # one ccfraud row (29 features)
        with socket.create_connection((url.hostname or "127.0.0.1", url.port or 80)) as client:
            client.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                           b"Content-Length: %d\r\n\r\n%s" % (url.path.encode(), len(body), body))
            deadline = time.monotonic() + 10
            while _in_progress(emu.base_url) < 1:  # the handler is running: stop() has something to wait for
                assert time.monotonic() < deadline, "the request never reached the app"
            started = time.monotonic()
            emu.stop()
            took = time.monotonic() - started
    finally:
        emu.stop()
    assert took < 2.0, f"stop() took {took:.2f} s"  # was 5.0 s (uvicorn, SIGKILL) and 3.0 s (hypercorn)


def test_a_run_against_a_stalling_embedded_target_ends_within_duration_and_drain(tmp_path: Path) -> None:
    duration_s, drain_s = 1.0, 0.5
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "run", str(ROOT / "scenarios" / "quickstart.toml"), "-q",
         "-d", f"{duration_s}s", "--warmup", "0s", "--set", f"emulator.latency_ms={NEVER_MS}",
         "--set", f"load.drain={drain_s}s", "--out", str(tmp_path / "r.arrow")],
        capture_output=True, text=True, cwd=tmp_path, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    wall = time.monotonic() - started
    assert proc.returncode == 3, proc.stderr[-2000:]  # no answer at all: the run failed, but ended
    assert "no successful answer" in proc.stderr and "Traceback" not in proc.stderr
    # start-up (interpreter, emulator child) + duration + drain + a generous margin; the old code's shutdown
    # alone waited 5 s (about 7 s in all)
    assert wall < duration_s + drain_s + 4.0, f"the run took {wall:.1f} s"
