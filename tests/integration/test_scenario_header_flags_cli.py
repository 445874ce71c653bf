"""`bench run SCENARIO.toml` with `-H` / `--header-env` sends those headers (merged into the scenario's
`[target] headers` / `headers_env`, checked as they are) and records them in the report — a secret header's value
never; `--method` and `--body`, which the scenario's [target] and [data] decide, are refused in one line with
exit 2 before any request. They used to be ignored without a word (an ingress run's `-H 'Host: …'` hit the
wrong route). Real CLI, a recording server on 127.0.0.1."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from bench.report.reader import read_report
from tests.integration.locust_cluster import serving

ROOT = Path(__file__).resolve().parents[2]
SECRET = "s3cr3t-header-value-9f2c"


class _Server(ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.seen: list[dict[str, str]] = []  # method and the headers of interest of each request


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def _answer(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with self.server.lock:
            self.server.seen.append({"method": self.command, **{k: str(self.headers.get(k))
                                                                 for k in ("Host", "X-Foo", "X-Secret")}})
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    do_POST = do_PUT = do_GET = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[_Server]:
    with serving(_Server()) as srv:
        yield srv


def _scenario(tmp_path: Path, srv: _Server, headers: str = "") -> None:
    (tmp_path / "b.json").write_text("{}")
    (tmp_path / "s.toml").write_text(f'name = "s"\n[target]\nkind = "http"\n'
                                     f'url = "http://127.0.0.1:{srv.server_address[1]}/infer"\n{headers}'
                                     '[data]\nbody = "b.json"\n[load]\nconcurrency = 1\nrequests = 3\n'
                                     'warmup = "0s"\n')


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "X_SECRET_VAR": SECRET}
    return subprocess.run([sys.executable, "-m", "bench", "run", "s.toml", *args, "-q", "--out", "r.arrow"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60, env=env)


def test_header_flags_apply_to_a_scenario_and_are_recorded(tmp_path: Path, server: _Server) -> None:
    _scenario(tmp_path, server, '[target.headers]\nx-foo = "from-file"\nX-Keep = "k"\n')
    proc = _run(tmp_path, "-H", "X-Foo: 1", "-H", "Host: model.ns.example.com",
                "--header-env", "X-Secret: X_SECRET_VAR")
    assert proc.returncode == 0, proc.stderr
    assert server.seen == [{"method": "POST", "Host": "model.ns.example.com", "X-Foo": "1",
                            "X-Secret": SECRET}] * 3
    report = read_report(tmp_path / "r.arrow")
    assert report.meta.target["host"] == "model.ns.example.com"
    text = report.meta.scenario_text
    assert 'X-Foo = "1"' in text and "from-file" not in text and "X-Keep" in text, text  # the flag replaced x-foo
    assert "[target.headers_env]" in text and "X-Secret" in text, text
    assert SECRET.encode() not in (tmp_path / "r.arrow").read_bytes()


@pytest.mark.parametrize(("args", "words"), [
    (["--method", "PUT"], ("--method", "ad-hoc", "target.method")),
    (["--body", "b.json"], ("--body", "ad-hoc", "data.")),
    (["-H", "Authorization: Bearer abc"], ("--header", "Authorization", "--header-env")),
    (["-H", "X-Upstream-Token: abc"], ("--header", "X-Upstream-Token", "--header-env")),
    (["-H", "Content-Length: 5"], ("--header", "Content-Length", "cannot be set")),
    (["-H", "Host: a/b"], ("--header", "host:port")),
    (["--header-env", "X-Secret: 1BAD"], ("--header-env", "X-Secret")),
], ids=["method", "body", "authorization", "token-like", "reserved", "bad-host", "bad-env-name"])
def test_a_flag_a_scenario_cannot_take_is_refused(tmp_path: Path, server: _Server, args: list[str],
                                                  words: tuple[str, ...]) -> None:
    _scenario(tmp_path, server)
    proc = _run(tmp_path, *args)
    err = proc.stderr.strip()
    assert proc.returncode == 2, (proc.returncode, err)
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for word in words:
        assert word in err, err
    assert "abc" not in err  # a refused credential is not repeated
    assert server.seen == [] and not (tmp_path / "r.arrow").exists()


def test_header_flags_on_a_kind_without_headers_are_refused(tmp_path: Path) -> None:
    (tmp_path / "s.toml").write_text('[target]\nkind = "ubiops"\nurl = "http://127.0.0.1:9/v2.1"\n')
    proc = _run(tmp_path, "-H", "X-Foo: 1")
    err = proc.stderr.strip()
    assert proc.returncode == 2 and len(err.splitlines()) == 1, err
    assert "--header" in err and "ubiops" in err, err


def test_ad_hoc_header_flags_are_unchanged(tmp_path: Path, server: _Server) -> None:
    """The ad hoc path shares the checks: its headers and method still reach the server."""
    (tmp_path / "b.json").write_text("{}")
    url = f"http://127.0.0.1:{server.server_address[1]}/infer"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "X_SECRET_VAR": SECRET}
    proc = subprocess.run([sys.executable, "-m", "bench", "run", "--url", url, "--body", "b.json", "--method", "PUT",
                           "-H", "X-Foo: 2", "--header-env", "X-Secret: X_SECRET_VAR", "-c", "1", "-n", "2",
                           "--warmup", "0s", "-q", "--out", "r.arrow"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    assert server.seen == [{"method": "PUT", "Host": f"127.0.0.1:{server.server_address[1]}", "X-Foo": "2",
                            "X-Secret": SECRET}] * 2
