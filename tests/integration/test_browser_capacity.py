"""Capacity and server-metric views in a real headless Chromium: the capacity page draws its curves and marks
the knee and the highest load under the SLO; a run report with server metrics shows server percentiles beside
the client's. Screenshots land in test-artifacts/ (git-ignored).

The server scrapes here are built in the test (the scraper is the run side's): what is checked is the view.
"""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path

import pytest
from test_browser import ARTIFACTS, CHROMIUM, bench, chromium, console_lines

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "unit"))

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium (apt install chromium)")]


def _dom(page: Path, profile: Path) -> str:
    dom = chromium(page.as_uri(), profile, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert console_lines(dom.stderr) == []
    return dom.stdout


def _shot(page: Path, profile: Path, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / name
    shot.unlink(missing_ok=True)
    result = chromium(page.as_uri(), profile, f"--screenshot={shot}", "--window-size=1280,1800", "--hide-scrollbars")
    assert result.returncode == 0 and console_lines(result.stderr) == []
    assert shot.exists() and shot.stat().st_size > 20_000  # a blank page compresses to a few kB


def test_capacity_page_in_chromium(tmp_path: Path) -> None:
    from test_capacity_report import RATES, queue_steps

    from bench.report.capacity_report import write_capacity_report

    cap = write_capacity_report(tmp_path / "cap.arrow", queue_steps(RATES), scenario_name="capacity",
                                slo="p99_ms ≤ 50, error_rate ≤ 0.01")
    page = tmp_path / "cap.html"
    shown = bench("report", str(cap), "--html", str(page))
    assert shown.returncode == 0, shown.stderr
    html = _dom(page, tmp_path / "profile")
    assert html.count("<svg") == 3
    series = dict(re.findall(r'<polyline class="series" data-name="([^"]*)" data-points="(\d+)"', html))
    for name in ("p50", "p99", "server p50", "server p99", "achieved", "offered (ideal)", "error rate"):
        assert int(series.get(name, 0)) >= 2, (name, series)
    marks = re.findall(r'<g class="mark" data-name="([^"]*)"', html)
    assert marks.count("knee") == 3 and marks.count("highest under SLO") == 3
    assert "knee: 200 req/s offered" in html
    _shot(page, tmp_path / "profile2", "capacity.png")


@pytest.mark.slow  # seconds of real processes: in CI's slow step, out of the default run
def test_server_percentiles_beside_client_in_chromium(tmp_path: Path) -> None:
    from bench.report.reader import read_report
    from bench.report.server_metrics import Scrape, add_server_metrics
    from bench.report.writer import write_report

    out = tmp_path / "run.arrow"
    run = bench("run", "scenarios/quickstart.toml", "--set", 'load.duration="2s"', "--set", 'load.warmup="0.5s"',
                "-q", "--json", "--out", str(out))
    assert run.returncode == 0, run.stderr
    report = read_report(out)
    bounds = (0.0005, 0.001, 0.0025, 0.005, 0.01, math.inf)
    scrapes = [Scrape(t, counters={"requests_total": 100.0 * t},
                      histograms={"request_duration_seconds": {le: (100.0 * t if le >= 0.001 else 20.0 * t)
                                                               for le in bounds}})
               for t in (0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0)]
    add_server_metrics(report, scrapes, latency_metric="request_duration_seconds", url="http://127.0.0.1:1/metrics")
    write_report(out, report)
    page = tmp_path / "run.html"
    shown = bench("report", str(out), "--html", str(page))
    assert shown.returncode == 0, shown.stderr
    html = _dom(page, tmp_path / "profile")
    client = re.search(r"<tr><td>from intended time</td>((?:<td>[^<]*</td>){5})</tr>", html)
    server = re.search(r'<tr><td><span class="server">server handler \(bucket res\.\)</span></td>'
                       r"((?:<td>[^<]*</td>){5})</tr>", html)
    assert client and server, html[:3000]
    client_p50 = float(re.findall(r"<td>([^<]*)</td>", client.group(1))[0])
    server_p50 = float(re.findall(r"<td>([^<]*)</td>", server.group(1))[0])
    assert client_p50 > 0 and 0.5 <= server_p50 <= 1.0  # 80 % of the server's answers in 0.5-1 ms
    assert "network + queueing outside the handler" in html
    _shot(page, tmp_path / "profile2", "report-server.png")
