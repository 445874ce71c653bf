"""`--processes N` starts every worker's load at one instant agreed once all of them are ready to send. The start
used to be fixed at 1 + 0.2·N s after the workers were spawned: a worker that took longer to get ready (a big data
set to encode, a slow token endpoint) started its share late, and the merged report called that one run (or, as
here, the parts did not overlap and the run failed to merge). A worker that fails before it is ready calls the
run off: the others used to load the target for the whole duration before the run failed anyway. Ctrl-C before
the start ends the run at once, with nothing to report (the workers' empty parts used to fail to merge)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from bench.report.reader import read_report

DELAY_S = 2.5  # every other token request: one of two workers is ready this much later than the other

SCENARIO = """\
name = "processes-start"

[target]
kind = "http"
url = "http://127.0.0.1:{port}/predict"

[auth]
kind = "client_credentials"
token_url = "http://127.0.0.1:{port}/token"
client_id = "api-client"
client_secret_env = "BENCH_TEST_SECRET"

[data]
body = "body.json"

[load]
concurrency = 2
warmup = "0s"
duration = "{duration}"
"""


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, odd_token: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.odd_token = odd_token  # what every other token request gets: "late" (DELAY_S) or "refused" (401)
        self.lock = threading.Lock()
        self.tokens = 0
        self.first_request: dict[int, float] = {}  # client port -> when its first inference request came


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path == "/token":
            with self.server.lock:
                n = self.server.tokens
                self.server.tokens += 1
            if n % 2 and self.server.odd_token == "refused":
                self.send_response(401)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if n % 2:
                time.sleep(DELAY_S)
            body = json.dumps({"access_token": f"t{n}", "token_type": "Bearer", "expires_in": 300}).encode()
        else:
            with self.server.lock:
                self.server.first_request.setdefault(self.client_address[1], time.monotonic())
            body = b'{"ok": true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def _run(tmp_path: Path, odd_token: str, duration: str, interrupt: bool = False,
         ) -> tuple[subprocess.CompletedProcess[str], _Server, float]:
    """``bench run --processes 2`` against a fresh server; ``interrupt``: Ctrl-C once both workers asked for a
    token (one of them is then DELAY_S from ready)."""
    server = _Server(odd_token)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        (tmp_path / "body.json").write_text('[{"x": 1}]')
        (tmp_path / "s.toml").write_text(SCENARIO.format(port=server.server_address[1], duration=duration))
        env = {k: v for k, v in os.environ.items() if k != "GITHUB_STEP_SUMMARY"} | {"BENCH_TEST_SECRET": "s3"}
        started = time.monotonic()
        with subprocess.Popen([sys.executable, "-m", "bench", "run", str(tmp_path / "s.toml"), "--processes", "2",
                               "-q", "-o", str(tmp_path / "r.arrow")], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) as popen:
            try:
                if interrupt:
                    deadline = time.monotonic() + 30
                    while server.tokens < 2:
                        assert popen.poll() is None and time.monotonic() < deadline, "workers never asked for tokens"
                        time.sleep(0.02)
                    popen.send_signal(signal.SIGINT)
                out, err = popen.communicate(timeout=90)
            finally:
                popen.kill()
        proc = subprocess.CompletedProcess(popen.args, popen.returncode, out, err)
        return proc, server, time.monotonic() - started
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@pytest.mark.slow  # real worker processes and a token endpoint that makes one of them seconds late
def test_workers_start_together_when_one_is_late_getting_ready(tmp_path: Path) -> None:
    proc, server, _ = _run(tmp_path, "late", "1s")
    assert proc.returncode == 0, proc.stderr
    assert server.tokens >= 2, server.tokens  # each worker fetched its own, one of them DELAY_S late
    starts = sorted(server.first_request.values())
    assert len(starts) == 2, server.first_request  # one connection per worker
    # the late worker held the start for both (before, it started ~DELAY_S - 1.4 s after the other)
    assert starts[1] - starts[0] < 0.3, starts
    report = read_report(tmp_path / "r.arrow")
    assert report.run.total().requests > 0 and report.meta.load["processes"] == 2


def test_a_worker_that_fails_before_it_is_ready_calls_the_run_off(tmp_path: Path) -> None:
    proc, server, took = _run(tmp_path, "refused", "30s")
    assert proc.returncode == 3, proc.stderr
    assert "could not get a token" in proc.stderr and "wrote no report" in proc.stderr, proc.stderr
    assert not server.first_request, "the healthy worker loaded the target of a run that had failed"
    assert took < 20, took  # not the 30 s of load the other worker used to apply


@pytest.mark.slow  # a real run of a few seconds: in CI's slow step
def test_ctrl_c_before_the_start_ends_the_run_with_nothing_to_report(tmp_path: Path) -> None:
    proc, server, took = _run(tmp_path, "late", "30s", interrupt=True)
    assert proc.returncode == 130, proc.stderr
    assert "interrupted" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not server.first_request, "a worker loaded the target after the run was stopped"
    assert not list(tmp_path.glob("*.arrow")) and not list(tmp_path.glob(".*checkpoint")), list(tmp_path.iterdir())
    assert took < 20, took
