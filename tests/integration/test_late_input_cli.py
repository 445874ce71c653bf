"""Bad input found by the run core itself (an unset headers_env / token_env variable) is refused before any
request reaches the target, in one line with exit 2, and leaves no open file behind (run under `python -X dev`,
which reports an unclosed file on stderr)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.integration.locust_cluster import serving

ROOT = Path(__file__).resolve().parents[2]


class _Counting(BaseHTTPRequestHandler):
    seen: list[str] = []  # noqa: RUF012 - per test: the fixture clears it

    def do_POST(self) -> None:
        self.seen.append(self.path)
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def target() -> Iterator[tuple[str, list[str]]]:
    seen: list[str] = []
    handler = type("Handler", (_Counting,), {"seen": seen})
    with serving(ThreadingHTTPServer(("127.0.0.1", 0), handler)) as server:
        yield f"http://127.0.0.1:{server.server_address[1]}/infer", seen


@pytest.mark.parametrize("flags", [["--header-env", "X-Api-Key: BENCH_TEST_UNSET_VAR"],
                                   ["--set", 'target.token_env="BENCH_TEST_UNSET_VAR"']])
def test_unset_secret_variable_is_refused_before_any_request(tmp_path: Path, target: tuple[str, list[str]],
                                                             flags: list[str]) -> None:
    url, seen = target
    body = tmp_path / "b.json"
    body.write_text("{}")
    out = tmp_path / "r.arrow"
    env = {k: v for k, v in os.environ.items() if k != "BENCH_TEST_UNSET_VAR"}
    proc = subprocess.run([sys.executable, "-X", "dev", "-m", "bench", "run", "--url", url, "--body", str(body),
                           *flags, "-d", "1s", "-q", "--out", str(out)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "BENCH_TEST_UNSET_VAR" in lines[0] and "is not set" in lines[0], proc.stderr
    assert seen == []  # nothing reached the target
    assert not out.exists() and not list(tmp_path.glob(".*checkpoint"))
