"""`[server_metrics]` through a misbehaving metrics endpoint, with the real `bench run` CLI over loopback.

An emulator process (`bench serve`) is the target; a small proxy in front of its ``/metrics`` answers the n-th
scrape as the test plans it (a valid page without the histogram, a 503, an answer held back before it reads the
emulator's counts, a body trickled a byte at a time): what a load balancer, a restarting pod or a server busy
with the load does to a scrape.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Callable, Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pyarrow.ipc as ipc
import pytest

from tests.integration.locust_cluster import serving

ROOT = Path(__file__).resolve().parents[2]
Plan = Callable[[int], tuple[str, float]]  # scrape number (from 1) -> (action, argument)


class Proxy:
    """``/metrics`` in front of ``upstream``: each GET does what ``plan`` says for its number."""

    def __init__(self, upstream: str, plan: Plan) -> None:
        self.upstream, self.plan = upstream, plan
        self.count = 0
        self.lock = threading.Lock()
        self.closing = threading.Event()  # set at teardown: held-back and trickling answers end

    def handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with proxy.lock:
                    proxy.count += 1
                    n = proxy.count
                action, arg = proxy.plan(n)
                if action == "trickle":  # a 200 whose body comes a byte every `arg` s and never ends
                    self.send_response(200)
                    self.send_header("Content-Length", "100000")
                    self.end_headers()
                    try:
                        while not proxy.closing.wait(arg):
                            self.wfile.write(b"#")
                            self.wfile.flush()
                    except OSError:
                        pass
                    return
                if action == "status":
                    body, status = b"unavailable\n", int(arg)
                elif action == "empty":  # valid text, no histogram: another pod, an exporter answering partially
                    body, status = b"# TYPE up gauge\nup 1\n", 200
                else:
                    if action == "hold":  # a server busy with the load: it reads its counts when it gets round
                        proxy.closing.wait(arg)
                    with urllib.request.urlopen(proxy.upstream, timeout=10) as r:
                        body, status = r.read(), 200
                self.send_response(status)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        return Handler


@pytest.fixture
def proxied(serve_emulator: Callable[..., str]) -> Iterator[Callable[[Plan], tuple[str, str]]]:
    """``start(plan)`` -> (emulator base URL, proxy /metrics URL); everything stopped after the test."""
    proxies: list[Proxy] = []
    with contextlib.ExitStack() as stack:

        def start(plan: Plan) -> tuple[str, str]:
            base = serve_emulator()
            proxy = Proxy(f"{base}/metrics", plan)
            proxies.append(proxy)
            server = stack.enter_context(serving(ThreadingHTTPServer(("127.0.0.1", 0), proxy.handler())))
            return base, f"http://127.0.0.1:{server.server_address[1]}/metrics"

        try:
            yield start
        finally:
            for proxy in proxies:  # held-back and trickling answers end before the servers shut down
                proxy.closing.set()


def scenario(tmp_path: Path, base: str, metrics: str, *, timeout: str = "1s", extra: str = "") -> Path:
    path = tmp_path / "srv.toml"
    path.write_text(f"""name = "server-metrics"
[target]
kind = "kserve"
url = "{base}"
model_name = "ccfraud"
model_version = "1"
input_name = "tensor"
datatype = "FP32"
[data]
path = "{ROOT}/data/ccfraud_1k.df.json"
rows_per_request = 10
[load]
concurrency = 4
warmup = "0.5s"
duration = "1.5s"
[server_metrics]
url = "{metrics}"
interval = "0.25s"
timeout = "{timeout}"
{extra}""")
    return path


def bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "COLUMNS": "400"})


def run(path: Path, out: Path) -> tuple[dict[str, Any], dict[str, Any], subprocess.CompletedProcess[str]]:
    """`bench run --json`: (summary, the measured phase's server_latency row with its text parsed, process)."""
    proc = bench("run", str(path), "--json", "--quiet", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    rows = ipc.open_file(str(out)).read_all().to_pylist()
    measured = [r for r in rows if r["section"] == "server_latency" and r["phase"] == "measured"]
    row = {**measured[0], **json.loads(measured[0]["text"])} if measured else {}
    return json.loads(proc.stdout), row, proc


def views(out: Path) -> list[str]:
    """The stored report as the terminal, Markdown and HTML views print it (HTML unescaped)."""
    import html

    md, page = out.with_suffix(".md"), out.with_suffix(".html")
    term = bench("report", str(out), "--markdown", str(md), "--html", str(page))
    assert term.returncode == 0, term.stderr
    return [term.stdout, md.read_text(), html.unescape(page.read_text())]


@pytest.mark.slow  # a real run of ~4 s
def test_a_scrape_without_the_histogram_is_skipped(tmp_path: Path, proxied: Callable[[Plan], tuple[str, str]]) -> None:
    """The 4th scrape (~0.75 s, inside the measured phase) is a valid page without the histogram. Counted as zero,
    the next interval held every request since the server started (the warm-up's too): ≈1.5x the phase."""
    base, metrics = proxied(lambda n: ("empty", 0) if n == 4 else ("pass", 0))
    s, row, _ = run(scenario(tmp_path, base, metrics), tmp_path / "r.arrow")
    client = s["requests"]
    lo, hi = row["count_bounds"]
    assert lo <= client <= hi, (lo, client, hi)
    assert 0.8 * client <= row["count"] <= 1.2 * client, (row["count"], client)


@pytest.mark.slow  # a real run of ~4 s
def test_a_late_answer_keeps_the_count_bounds(tmp_path: Path, proxied: Callable[[Plan], tuple[str, str]]) -> None:
    """The 2nd scrape (sent ~0.25 s, in the warm-up) is answered 0.9 s later with the counts of then, inside the
    measured phase (MLServer under load took up to 1 s). Filed at its send, the outer bound lost the measured
    requests before the answer; at its arrival, with the inner bound from the send, the bounds hold."""
    base, metrics = proxied(lambda n: ("hold", 0.9) if n == 2 else ("pass", 0))
    out = tmp_path / "r.arrow"
    s, row, _ = run(scenario(tmp_path, base, metrics, timeout="2s"), out)
    lo, hi = row["count_bounds"]
    assert lo <= s["requests"] <= hi, (lo, s["requests"], hi)
    sm = s["server_scrape"]
    assert sm["slow_scrapes"] >= 1 and sm["slowest_scrape_s"] >= 0.85, sm
    assert all("took more than half the 0.25 s scrape interval" in text for text in views(out))


@pytest.mark.slow  # a real run of ~4 s
def test_failing_scrapes_and_partial_coverage_in_every_view(tmp_path: Path,
                                                            proxied: Callable[[Plan], tuple[str, str]]) -> None:
    """503 from the 6th scrape on (~1.25 s): the server figures cover only the start of the measured phase.
    Before, every view showed them as the phase's, and the failures were only in the JSON."""
    base, metrics = proxied(lambda n: ("status", 503) if n >= 6 else ("pass", 0))
    out = tmp_path / "r.arrow"
    s, row, _ = run(scenario(tmp_path, base, metrics), out)
    assert row["partial"] and row["covers_s"] < 0.6 * row["phase_s"], row
    assert s["server_ms"]["partial"]["covers_s"] == row["covers_s"]
    for text in views(out):
        assert "PARTIAL: the scrapes cover" in text, text[-3000:]
        assert "scrapes of the server's metrics failed (first: PromError: HTTP 503)" in text, text[-3000:]


@pytest.mark.slow  # a real run of ~4 s
def test_a_trickling_endpoint_cannot_hold_the_run(tmp_path: Path, proxied: Callable[[Plan], tuple[str, str]]) -> None:
    """A 200 whose body comes a byte every 0.2 s: httpx's timeout is per read, so the scrape never ended, stop()
    waited 3 x timeout + 5 s after the load and the run said nothing. Now each scrape has a total deadline, the
    wait after the load is at most timeout + 1 s, and the failures are said."""
    base, metrics = proxied(lambda n: ("trickle", 0.2))
    out = tmp_path / "r.arrow"
    proc = bench("run", str(scenario(tmp_path, base, metrics, timeout="0.5s")), "--json", "--quiet", "--out",
                 str(out))
    assert proc.returncode == 0, proc.stderr
    meta = json.loads(ipc.open_file(str(out)).schema.metadata[b"bench.report"])
    ended = datetime.fromisoformat(meta["end_utc"].replace("Z", "+00:00")).timestamp()
    assert os.path.getmtime(out) - ended < 3.5  # the report is written after the scraper stopped
    sm = meta["extra"]["server_metrics"]
    assert sm["scrapes"] == 0 and sm["scrape_errors"] >= 2, sm
    assert "took longer than the 0.5s timeout" in sm["first_error"], sm
    assert "bench: warning: [server_metrics] no scrape of" in proc.stderr, proc.stderr


@pytest.mark.slow  # a real run of a few seconds: in CI's slow step
def test_a_latency_metric_no_scrape_holds_is_said(tmp_path: Path) -> None:
    """A plausible typo (MLServer's name ends _seconds): before, no server view and not a word about why."""
    out = tmp_path / "r.arrow"
    proc = bench("run", "scenarios/kserve.toml", "--set", 'load.duration="1s"', "--set", 'load.warmup="0s"',
                 "--set", 'server_metrics.latency_metric="rest_server_request_duration"', "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    line = next(x for x in proc.stderr.splitlines() if x.startswith("bench: warning:"))
    assert "latency_metric 'rest_server_request_duration': no histogram of that name in" in line, line
    assert "rest_server_request_duration_seconds" in line  # what the scrapes did hold
    meta = json.loads(ipc.open_file(str(out)).schema.metadata[b"bench.report"])
    assert meta["extra"]["server_metrics"]["warning"] in line
    assert "no histogram of that name" in proc.stdout  # and the terminal view says it under the latency table


@pytest.mark.slow  # a real run of a few seconds: in CI's slow step
def test_the_server_figure_compares_ok_answers_with_ok_answers(tmp_path: Path) -> None:
    """Half the emulator's answers are instant 500s. Its duration histogram is labelled by status (as MLServer's),
    so the server view keeps the 2xx series: the "network + queueing" gap compares ok answers with ok answers and
    no caveat is needed (without the label the 500s made the handler look 20x faster than the client's ok
    answers; the unit tests cover the caveat such a server gets)."""
    proc = bench("run", "scenarios/kserve.toml", "--set", 'load.duration="1s"', "--set", 'load.warmup="0s"',
                 "--set", "emulator.error_rate=0.5", "--out", str(tmp_path / "r.arrow"), "--json")
    assert proc.returncode == 0, proc.stderr
    s = json.loads(proc.stdout)
    assert s["errors"] > 0 and s["server_ms"]["answers"] == "2xx", s["server_ms"]
    assert s["server_ms"]["p50"] > 0.5 * s["service_ms"]["p50"], (s["server_ms"], s["service_ms"])
