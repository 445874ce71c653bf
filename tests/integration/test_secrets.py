"""End-to-end secret-leak test: `bench run` with known secrets, then search every byte the run wrote.

Secrets come in through environment variables only; the embedded emulator requires (and issues) short-lived
tokens so refreshes happen during the run. Every file the run created (the Arrow report is zstd-compressed,
so it is also decoded), stdout and stderr are searched for the secrets, their common encodings (URL-encoded,
the HTTP Basic blob) and anything shaped like an issued token.
"""

from __future__ import annotations

import base64
import importlib.util
import os
import re
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest

from tests.integration.locust_cluster import serving

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "data" / "ccfraud_1k.df.json"
JWT = re.compile(rb"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}")

pytestmark = pytest.mark.skipif(importlib.util.find_spec("bench.commands.run") is None,
                                reason="bench run is not available yet")

SCENARIO = """\
name = "secret-leak"

[target]
kind = "wallaroo"
url = "embedded"
format = "pandas-records"

[auth]
{auth}

[data]
path = "data/ccfraud_1k.df.json"
rows_per_request = 10

[load]
concurrency = 4
duration = "3s"
warmup = "0s"

[emulator]
require_token = true
token_ttl_s = 2
"""

AUTH = {
    "client_credentials": 'kind = "client_credentials"\nclient_id = "api-client"\n'
                          'client_secret_env = "BENCH_TEST_CLIENT_SECRET"',
    "password": 'kind = "password"\nclient_id = "api-client"\nclient_secret_env = "BENCH_TEST_CLIENT_SECRET"\n'
                'username_env = "BENCH_TEST_USERNAME"\npassword_env = "BENCH_TEST_PASSWORD"',
}


def _decoded_arrow(path: Path) -> bytes:
    """The text of every value and metadata entry of an Arrow IPC file/stream ('' if it is not one)."""
    import pyarrow as pa
    import pyarrow.ipc

    for opener in (pyarrow.ipc.open_file, pyarrow.ipc.open_stream):
        try:
            table = opener(pa.OSFile(str(path))).read_all()
        except (pa.ArrowInvalid, OSError):
            continue
        parts = [repr(table.schema.metadata), *(repr(f.metadata) for f in table.schema)]
        parts += [repr(column.to_pylist()) for column in table.columns]
        return "\n".join(parts).encode()
    return b""


def _needles(values: list[str]) -> list[bytes]:
    out: set[bytes] = set()
    for value in values:
        for form in (value, quote(value, safe=""), quote_plus(value)):
            out.add(form.encode())
    return sorted(out, key=len, reverse=True)


@pytest.mark.slow  # seconds of real processes: in CI's slow step, out of the default run
@pytest.mark.parametrize("kind", ["client_credentials", "password"])
def test_no_secret_in_anything_the_run_writes(tmp_path: Path, kind: str) -> None:
    client_secret = f"cs-{secrets.token_urlsafe(18)}"
    password = f"pw-{secrets.token_urlsafe(18)}"
    (tmp_path / "data").mkdir()
    shutil.copy(DATA, tmp_path / "data" / DATA.name)
    (tmp_path / "scenario.toml").write_text(SCENARIO.format(auth=AUTH[kind]))
    before = {p for p in tmp_path.rglob("*")}
    env = dict(os.environ, BENCH_TEST_CLIENT_SECRET=client_secret, BENCH_TEST_USERNAME="loadtester",
               BENCH_TEST_PASSWORD=password, HOME=str(tmp_path), XDG_CACHE_HOME=str(tmp_path / ".cache"),
               PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "bench", "run", "scenario.toml", "--out", "report.arrow"],
                          cwd=tmp_path, env=env, capture_output=True, timeout=90, check=False)

    basic = base64.b64encode(f"api-client:{client_secret}".encode()).decode()
    needles = _needles([client_secret, password, basic])
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p not in before]
    haystacks: dict[str, bytes] = {"stdout": proc.stdout, "stderr": proc.stderr}
    for path in written:
        haystacks[str(path.relative_to(tmp_path))] = path.read_bytes()
        decoded = _decoded_arrow(path)
        if decoded:
            haystacks[f"{path.relative_to(tmp_path)} (decoded)"] = decoded

    leaks = [(where, needle.decode()[:6] + "…") for where, data in haystacks.items() for needle in needles
             if needle in data]
    leaks += [(where, "token " + m.group(0)[:10].decode() + "…") for where, data in haystacks.items()
              for m in [JWT.search(data)] if m]
    assert not leaks, f"secrets leaked: {leaks}"
    stderr = proc.stderr.decode(errors="replace").replace(client_secret, "<secret>").replace(password, "<pw>")
    rc = proc.returncode
    assert rc == 0, f"bench run exited {rc}: {stderr[-2000:]}"
    assert any(p.suffix == ".arrow" for p in written), "no report written"
    assert any(k.endswith("(decoded)") for k in haystacks), "the report could not be decoded for searching"


# -- secrets a misbehaving server echoes back, secret query parameters, env-sourced headers ----------------------

ECHO_SCENARIO = """\
name = "echo-leak"

[target]
kind = "http"
url = "http://127.0.0.1:{port}/predict?api_key={query_key}&model=m1"
token_env = "BENCH_TEST_TOKEN"
headers_env = {{ "X-Api-Key" = "BENCH_TEST_API_KEY" }}

[data]
body = "body.json"

[load]
concurrency = 2
duration = "1s"

[report]
raw = true
"""


def _echo_server() -> tuple[ThreadingHTTPServer, list[dict[str, str]]]:
    """127.0.0.1: answers 500 with the request's Authorization, X-Api-Key and path (query) in the body."""

    seen: list[dict[str, str]] = []

    class Echo(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            got = {"authorization": self.headers.get("Authorization", ""),
                   "x-api-key": self.headers.get("X-Api-Key", ""), "path": self.path}
            if len(seen) < 5:
                seen.append(got)
            body = (f'{{"error": "denied", "you sent": "{got["authorization"]}", "key": "{got["x-api-key"]}", '
                    f'"path": "{got["path"]}"}}').encode()
            self.send_response(500)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    return ThreadingHTTPServer(("127.0.0.1", 0), Echo), seen


def _haystacks(tmp_path: Path, before: set[Path], procs: list[subprocess.CompletedProcess[bytes]]
               ) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for i, proc in enumerate(procs):
        out[f"stdout {i}"], out[f"stderr {i}"] = proc.stdout, proc.stderr
    for path in tmp_path.rglob("*"):
        if path.is_file() and path not in before:
            out[str(path.relative_to(tmp_path))] = path.read_bytes()
            decoded = _decoded_arrow(path)
            if decoded:
                out[f"{path.relative_to(tmp_path)} (decoded)"] = decoded
    return out


def _assert_no_leak(haystacks: dict[str, bytes], values: list[str]) -> None:
    leaks = [(where, needle.decode()[:6] + "…") for where, data in haystacks.items() for needle in _needles(values)
             if needle in data]
    assert not leaks, f"secrets leaked: {leaks}"


@contextmanager
def _echo_setup(tmp_path: Path, duration: str = "1s") -> Iterator[tuple[list[str], dict[str, str],
                                                                      list[dict[str, str]]]]:
    """Fresh secret values (token, API key, query key), the echo server, its scenario and body in ``tmp_path``;
    yields (values, the run's environment, the requests the server saw). The server is always shut down."""
    token = f"tk-{secrets.token_urlsafe(18)}"
    api_key = f"ak-{secrets.token_urlsafe(18)}"
    query_key = f"qk{secrets.token_hex(12)}"
    (tmp_path / "body.json").write_text('{"x": 1}')
    srv, seen = _echo_server()
    with serving(srv):
        port = srv.server_address[1]
        (tmp_path / "scenario.toml").write_text(
            ECHO_SCENARIO.format(port=port, query_key=query_key).replace('duration = "1s"', f'duration = "{duration}"'))
        env = dict(os.environ, BENCH_TEST_TOKEN=token, BENCH_TEST_API_KEY=api_key, PYTHONPATH=str(ROOT),
                   HOME=str(tmp_path))
        yield [token, api_key, query_key], env, seen


def test_values_a_server_echoes_never_reach_anything_written(tmp_path: Path) -> None:
    with _echo_setup(tmp_path) as (values, env, seen):
        token, api_key, query_key = values
        before = set(tmp_path.rglob("*"))
        run = subprocess.run([sys.executable, "-m", "bench", "run", "scenario.toml", "--out", "r.arrow"],
                             cwd=tmp_path, env=env, capture_output=True, timeout=90, check=False)
        assert (tmp_path / "r.arrow").exists(), run.stderr.decode(errors="replace")[-2000:]
        as_json = subprocess.run([sys.executable, "-m", "bench", "run", "scenario.toml", "--out", "j.arrow",
                                  "--json", "-q"], cwd=tmp_path, env=env, capture_output=True, timeout=90,
                                 check=False)
        views = subprocess.run([sys.executable, "-m", "bench", "report", "r.arrow", "--html", "r.html",
                                "--markdown", "r.md"], cwd=tmp_path, env=env, capture_output=True, timeout=90,
                               check=False)
    # the values really went out (so a clean result means scrubbed, not unsent)
    assert seen and seen[0]["authorization"] == f"Bearer {token}" and seen[0]["x-api-key"] == api_key
    assert query_key in seen[0]["path"]
    assert views.returncode == 0, views.stderr
    haystacks = _haystacks(tmp_path, before, [run, as_json, views])
    assert {"r.html", "r.md", "r.arrow (decoded)"} <= set(haystacks)
    _assert_no_leak(haystacks, values)
    # the echoed answers were kept as evidence — with the values blanked
    assert b"denied" in haystacks["r.arrow (decoded)"] and b"***" in haystacks["r.arrow (decoded)"]


@pytest.mark.parametrize(("target_lines", "flag_args", "secret", "names"), [
    ('headers = { "X-Api-Key" = "SECRETVALUE123" }', [], "SECRETVALUE123", "headers_env"),
    ('headers = { Cookie = "session=SECRETVALUE123" }', [], "SECRETVALUE123", "headers_env"),
    ('headers = { Authorization = "Bearer SECRETVALUE123" }', [], "SECRETVALUE123", "token_env"),
    ('token_env = "eyJhbGciOiJIUzI1NiJ9.SECRETVALUE123"', [], "SECRETVALUE123", "NAME of an environment variable"),
    ('headers = { "X-Custom-Auth" = "Bearer SECRETVALUE123" }', [], "SECRETVALUE123", "headers_env"),
    ('headers = { "Ocp-Apim-Subscription-Key" = "SECRETVALUE123" }', [], "SECRETVALUE123", "headers_env"),
    ("", ["--set", "server_metrics.url=http://prom:SECRETVALUE123@127.0.0.1:9/metrics"], "SECRETVALUE123",
     "server_metrics.url"),
])
def test_credentials_in_a_scenario_are_refused_without_echo(tmp_path: Path, target_lines: str,
                                                            flag_args: list[str], secret: str, names: str) -> None:
    (tmp_path / "body.json").write_text("{}")
    (tmp_path / "s.toml").write_text(f'[target]\nkind = "http"\nurl = "http://127.0.0.1:9/x"\n{target_lines}\n'
                                     '[data]\nbody = "body.json"\n[load]\nconcurrency = 1\nduration = "1s"\n')
    proc = subprocess.run([sys.executable, "-m", "bench", "run", "s.toml", *flag_args], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and names in proc.stderr, proc.stderr
    assert secret not in proc.stderr + proc.stdout


@pytest.mark.parametrize(("args", "secret", "names"), [
    (["--url", "http://alice:PASSWORD42x@127.0.0.1:9/x"], "PASSWORD42x", "refused"),
    (["--url", "http://127.0.0.1:9/x", "--header", "X-Api-Key: SECRETVALUE123"], "SECRETVALUE123",
     "--header-env"),
    (["--url", "http://127.0.0.1:9/x", "--header", "Authorization: Bearer SECRETVALUE123"], "SECRETVALUE123",
     "--header-env"),
    (["--url", "http://127.0.0.1:9/x", "--set", "server_metrics.url=http://prom:PASSWORD42x@127.0.0.1:9/metrics"],
     "PASSWORD42x", "server_metrics.url"),
])
def test_credentials_on_the_command_line_are_refused_without_echo(tmp_path: Path, args: list[str], secret: str,
                                                                  names: str) -> None:
    (tmp_path / "body.json").write_text("{}")
    proc = subprocess.run([sys.executable, "-m", "bench", "run", *args, "--body", "body.json", "-d", "1s"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and names in proc.stderr, proc.stderr
    assert secret not in proc.stderr + proc.stdout


def test_a_killed_runs_checkpoint_and_recovered_report_hold_no_secret(tmp_path: Path) -> None:
    import signal
    import time

    ckpt = tmp_path / ".r.arrow.checkpoint"
    with _echo_setup(tmp_path, duration="60s") as (values, env, seen):
        before = set(tmp_path.rglob("*"))
        proc = subprocess.Popen([sys.executable, "-m", "bench", "run", "scenario.toml", "--out", "r.arrow", "-q"],
                                cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 60
            while not (ckpt.exists() and ckpt.read_bytes().count(b"\n") >= 3) and proc.poll() is None:
                assert time.monotonic() < deadline, "no checkpoint ticks"
                time.sleep(0.05)
            proc.send_signal(signal.SIGKILL)
            out, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=30)
    assert seen and seen[0]["x-api-key"] == values[1]
    checkpoint = ckpt.read_bytes()
    assert b"denied" in checkpoint  # the echoed answer is in it, as evidence
    rec = subprocess.run([sys.executable, "-m", "bench", "recover", "r.arrow"], cwd=tmp_path, env=env,
                         capture_output=True, timeout=60, check=False)
    assert rec.returncode == 0, rec.stderr
    haystacks = _haystacks(tmp_path, before, [rec])
    haystacks.update({"checkpoint": checkpoint, "killed stdout": out, "killed stderr": err})
    _assert_no_leak(haystacks, values)


# -- a credential in -H, a long token cut inside the 512-byte sample, its bare base64, ?code=, a metrics URL ---------

def _unauthorized_echo_server() -> tuple[ThreadingHTTPServer, list[dict[str, str]]]:
    """127.0.0.1: every POST gets a 401 echoing the X-Upstream-Auth credential bare, in turn: after padding that
    puts the cut of a 512-byte sample inside it, base64-encoded, and whole beside the path (query); GET /metrics
    answers a one-line Prometheus text."""
    seen: list[dict[str, str]] = []

    class Unauthorized(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _answer(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            seen.append({"get": self.path})
            self._answer(200, b"up 1\n")

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            bare = self.headers.get("X-Upstream-Auth", "").partition(" ")[2]
            seen.append({"bare": bare, "path": self.path})
            turn = len(seen) % 3
            if turn == 0:
                text = "x" * 480 + " you sent " + bare
            elif turn == 1:
                text = "unknown credential " + base64.b64encode(bare.encode()).decode()
            else:
                text = f"you sent {bare} to {self.path}"
            self._answer(401, text.encode())

        def log_message(self, *args: object) -> None:
            pass

    return ThreadingHTTPServer(("127.0.0.1", 0), Unauthorized), seen


@pytest.mark.slow  # seconds of real processes: in CI's slow step, out of the default run
def test_credentials_from_the_command_line_and_every_url_never_reach_anything_written(tmp_path: Path) -> None:
    token = "ey" + secrets.token_urlsafe(600)  # a JWT-sized token: never whole inside a 512-byte sample
    code = f"qc{secrets.token_hex(12)}"
    metrics_token = f"mt{secrets.token_hex(12)}"
    (tmp_path / "body.json").write_text('{"x": 1}')
    summary = tmp_path / "step-summary.md"
    env = dict(os.environ, PYTHONPATH=str(ROOT), HOME=str(tmp_path), GITHUB_STEP_SUMMARY=str(summary))
    srv, seen = _unauthorized_echo_server()
    before = set(tmp_path.rglob("*"))
    with serving(srv):
        base = f"http://127.0.0.1:{srv.server_address[1]}"
        args = ["--url", f"{base}/infer?code={code}", "--body", "body.json", "-c", "2", "-d", "1s",
                "-H", f"X-Upstream-Auth: Bearer {token}",
                "--set", f"server_metrics.url={base}/metrics?access_token={metrics_token}"]
        runs = [subprocess.run([sys.executable, "-m", "bench", "run", *args, "--out", out, *extra], cwd=tmp_path,
                               env=env, capture_output=True, timeout=90, check=False)
                for out, extra in (("r.arrow", []), ("j.arrow", ["--json", "-q"]))]
    views = subprocess.run([sys.executable, "-m", "bench", "report", "r.arrow", "--html", "r.html", "--markdown",
                            "r.md"], cwd=tmp_path, env=env, capture_output=True, timeout=90, check=False)
    # the credentials really went out, and every kind of echo came back (so a clean result means scrubbed)
    posts = [s for s in seen if "bare" in s]
    assert len(posts) >= 3 and posts[0]["bare"] == token and code in posts[0]["path"], runs[0].stderr[-2000:]
    assert any(metrics_token in s.get("get", "") for s in seen)
    assert views.returncode == 0, views.stderr
    haystacks = _haystacks(tmp_path, before, [*runs, views])
    assert {"r.html", "r.md", "r.arrow (decoded)", "step-summary.md"} <= set(haystacks)
    assert b"you sent" in haystacks["r.arrow (decoded)"] and b"unknown credential" in haystacks["r.arrow (decoded)"]
    b64 = base64.b64encode(token.encode()).decode()
    fragments = [token[:16], token[-16:], b64[:16], b64[-16:]]  # what a cut inside the token would leave
    _assert_no_leak(haystacks, [token, f"Bearer {token}", b64, code, metrics_token, *fragments])
