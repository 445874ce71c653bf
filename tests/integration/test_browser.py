"""The HTML report in a real headless Chromium: plots render, no console errors; a screenshot is kept.

The screenshot lands in test-artifacts/report.png (git-ignored; CI can upload it).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts"

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium (apt install chromium)")]


def chromium(url: str, profile: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                           "--no-first-run", "--disable-background-networking", "--disable-component-update",
                           "--disable-sync", f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
                           *extra, url], capture_output=True, text=True, timeout=90)


def console_lines(stderr: str) -> list[str]:
    """Messages the page wrote to its console (console.* calls and uncaught exceptions)."""
    return [ln for ln in stderr.splitlines() if ":CONSOLE" in ln or "Uncaught" in ln]


def bench(*args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k != "GITHUB_STEP_SUMMARY"}
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=90, env=clean)


def rendered(tmp_path: Path, name: str, scenario: str, *run_args: str) -> tuple[Path, str]:
    """A 2 s run of ``scenario``, its HTML report, and the DOM Chromium made of it (no console message allowed)."""
    report = tmp_path / f"{name}.arrow"
    run = bench("run", scenario, "--set", 'load.duration="2s"', "--set", 'load.warmup="0.5s"', *run_args,
                "-q", "--json", "--out", str(report))
    assert run.returncode == 0, run.stderr
    page = tmp_path / f"{name}.html"
    shown = bench("report", str(report), "--html", str(page))
    assert shown.returncode == 0, shown.stderr
    dom = chromium(page.as_uri(), tmp_path / "profile", "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert console_lines(dom.stderr) == []
    return page, dom.stdout


def test_console_detection_works(tmp_path: Path) -> None:
    """The check below would see a broken page (guards against a silent logging change in Chromium)."""
    probe = tmp_path / "probe.html"
    probe.write_text('<html><body><script>console.error("probe-error"); nope();</script></body></html>')
    lines = console_lines(chromium(probe.as_uri(), tmp_path / "profile", "--dump-dom").stderr)
    assert any("probe-error" in ln for ln in lines) and any("Uncaught" in ln for ln in lines)


def test_html_report_renders_in_chromium(tmp_path: Path) -> None:
    page, html = rendered(tmp_path, "report", "scenarios/quickstart.toml", "--set", "emulator.error_rate=0.05",
                          "--raw")
    assert html.count("<svg") >= 5  # distribution, latency, throughput, rows, errors
    series = dict(re.findall(r'<polyline class="series" data-name="([^"]*)" data-points="(\d+)"', html))
    for name in ("from intended time", "service time", "p50", "p99", "requests/s", "rows/s"):
        assert int(series.get(name, 0)) >= 2, (name, series)
    assert any(k.startswith("http_error:50") for k in series), series  # errors by kind over time (raw log)
    assert len(re.findall(r"<circle ", html)) > 20
    assert _other_timings(html).keys() == {"server-reported (per answer)"}  # the emulator's per-answer time

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "report.png"
    shot.unlink(missing_ok=True)
    result = chromium(page.as_uri(), tmp_path / "profile2", f"--screenshot={shot}", "--window-size=1280,2000",
                      "--hide-scrollbars")
    assert result.returncode == 0, result.stderr[-2000:]
    assert console_lines(result.stderr) == []
    assert shot.exists() and shot.stat().st_size > 20_000  # a blank page compresses to a few kB


@pytest.mark.slow  # seconds of real processes: in CI's slow step, out of the default run
def test_html_shows_client_and_server_percentiles_side_by_side(tmp_path: Path) -> None:
    """A real KServe V2 run with [server_metrics] (the embedded emulator's /metrics): the page's latency table
    holds the client's service time and the server handler's percentiles in the same columns."""
    _, html = rendered(tmp_path, "kserve", "scenarios/kserve.toml")
    number = r"\s*<td[^>]*>\s*([0-9][0-9,.]*)\s*</td>"
    client = re.search(r"service \(sent → done\)\s*</td>" + number * 3, html)
    server = re.search(r'<span class="server">server handler \(bucket res\.\)</span>\s*</td>' + number * 3, html)
    assert client is not None and server is not None, html[html.find("<h2>Latency"):][:3000]
    assert all(float(v.replace(",", "")) > 0 for v in (*client.groups(), *server.groups()))
    assert "outside the handler" in html


def _other_timings(dom: str) -> dict[str, list[float]]:
    """The target-specific timings table of the rendered page: label -> p50 … max (ms)."""
    m = re.search(r'<div class="other-timings">(.*?)</table>', dom, re.S)
    assert m is not None, dom[dom.find("<h2>Latency"):][:3000]
    rows = re.findall(r"<tr><td>([^<]+)</td>((?:<td>[^<]*</td>){5})</tr>", m.group(1))
    return {label: [float(v.replace(",", "")) for v in re.findall(r"<td>([^<]*)</td>", cells)]
            for label, cells in rows}


@pytest.mark.slow  # seconds of real processes: in CI's slow step, out of the default run
def test_html_shows_ubiops_batch_timings(tmp_path: Path) -> None:
    """A real UbiOps batch run: batch_e2e, queue and processing (terminal and --json only before) are a table
    on the page, with sane percentiles; the Markdown view has them too."""
    page, html = rendered(tmp_path, "batch", "scenarios/ubiops-batch.toml")
    timings = _other_timings(html)
    assert set(timings) >= {"batch: created → result collected", "batch: queued (created → started)",
                            "batch: processing (started → done)", "batch: create call",
                            "batch: poll interval"}, timings
    for label, (p50, p90, p99, p999, top) in timings.items():
        assert 0 < p50 <= p90 <= p99 <= p999 <= top, (label, timings)
    e2e, processing = timings["batch: created → result collected"], timings["batch: processing (started → done)"]
    assert e2e[0] >= processing[0]  # created → collected holds the processing
    md = tmp_path / "batch.md"
    assert bench("report", str(page.with_suffix(".arrow")), "--markdown", str(md)).returncode == 0
    assert "| batch: queued (created → started) |" in md.read_text()
