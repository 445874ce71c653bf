"""`bench run` end to end: the real CLI against the real emulator over loopback sockets."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.ipc as ipc
import pytest

from tests.integration.locust_cluster import served_asgi

ROOT = Path(__file__).resolve().parents[2]
SHORT = ["--set", 'load.duration="2s"', "--set", 'load.warmup="0.5s"']


def bench(*args: str, timeout: float = 90, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def rows_per_request(n: int, rows: int = 1001) -> float:
    """Mean rows per request when the 1,001-row data set is cut into n-row requests (the last one shorter)."""
    return rows / -(-rows // n)


def section(path: Path, name: str) -> list[dict[str, object]]:
    """Rows of one section of a report, read with pyarrow alone (no bench import)."""
    table = ipc.open_file(str(path)).read_all()
    return [row for row in table.to_pylist() if row["section"] == name]


def summary_of(proc: subprocess.CompletedProcess[str]) -> dict[str, object]:
    assert proc.returncode == 0, proc.stderr
    data: dict[str, object] = json.loads(proc.stdout)
    return data


def test_quickstart_json_summary_and_report(tmp_path: Path) -> None:
    out = tmp_path / "q.arrow"
    s = summary_of(bench("run", "scenarios/quickstart.toml", *SHORT, "--json", "--out", str(out)))
    for key in ("requests", "errors", "rps", "rows_per_s", "latency_ms", "service_ms", "errors_by_kind",
                "generator_bound", "report"):
        assert key in s, key
    for view in ("latency_ms", "service_ms"):
        figures = s[view]
        assert isinstance(figures, dict)
        assert set(figures) >= {"p50", "p90", "p99", "p999", "max"}
        assert 0 < figures["p50"] <= figures["p99"] <= figures["max"]
    assert isinstance(s["requests"], int) and s["requests"] > 100
    assert s["errors"] == 0
    assert s["rows_per_s"] == pytest.approx(rows_per_request(10) * float(s["rps"]), rel=0.02)  # type: ignore[arg-type]
    assert Path(str(s["report"])) == out and out.exists()
    # the report opens with pyarrow alone and its histogram counts equal the summary's request counts
    latency = [r for r in section(out, "histogram") if r["name"] == "latency" and r["phase"] == "measured"]
    assert sum(r["count"] for r in latency) == s["requests"]
    ok = [r for r in latency if r["outcome"] == "ok"]
    assert ok[0]["p99_ms"] == pytest.approx(s["latency_ms"]["p99"], rel=1e-3)  # type: ignore[index]


def test_quickstart_human_output_and_default_report_dir(tmp_path: Path) -> None:
    proc = bench("run", "scenarios/quickstart.toml", *SHORT, "--set", f'report.dir="{tmp_path}"')
    assert proc.returncode == 0, proc.stderr
    assert "req/s" in proc.stdout
    reports = list(tmp_path.glob("*.arrow"))
    assert len(reports) == 1 and "quickstart" in reports[0].name
    assert "progress:" in proc.stderr  # not a terminal: plain progress lines


def test_arrow_format_end_to_end(tmp_path: Path) -> None:
    s = summary_of(bench("run", "scenarios/wallaroo-arrow.toml", *SHORT, "--set", "load.rate=100.0",
                         "--json", "--out", str(tmp_path / "a.arrow")))
    assert s["errors"] == 0
    assert s["requests"] >= 150  # 100/s for 2 s measured
    assert s["rows_per_s"] == pytest.approx(rows_per_request(100) * float(s["rps"]), rel=0.03)  # type: ignore[arg-type]


def test_error_rate_is_counted_by_kind(tmp_path: Path) -> None:
    s = summary_of(bench("run", "scenarios/quickstart.toml", *SHORT, "--set", "emulator.error_rate=0.2",
                         "--json", "--out", str(tmp_path / "e.arrow")))
    requests, errors = int(s["requests"]), int(s["errors"])  # type: ignore[call-overload]
    assert 0.1 < errors / requests < 0.3
    by_kind = s["errors_by_kind"]
    assert isinstance(by_kind, dict) and sum(by_kind.values()) == errors
    assert all(k.startswith("http_error") for k in by_kind)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["scenarios/nope.toml"], "not found"),
        (["scenarios/quickstart.toml", "--set", "load.rate=-1"], "load.rate"),
        (["scenarios/quickstart.toml", "--set", "load.bogus=1"], "unknown key"),
        (["scenarios/quickstart.toml", "--set", 'data.column="nope"'], "nope"),
        (["--url", "127.0.0.1:8080/infer", "--body", "data/ccfraud_1k.df.json"], "scheme"),
    ],
)
def test_bad_input_exits_2_with_one_line(args: list[str], words: str) -> None:
    proc = bench("run", *args)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert words in lines[0]
    assert "Traceback" not in proc.stderr


def test_adhoc_run_against_bench_serve(serve_emulator: Callable[..., str], tmp_path: Path) -> None:
    url = f"{serve_emulator('--latency-ms', '1')}/v1/api/pipelines/infer/ccfraud-1/ccfraud"
    s = summary_of(bench("run", "--url", url, "--body", "data/ccfraud_1k.df.json", "-c", "4", "-d", "1s",
                         "--json", "--out", str(tmp_path / "h.arrow")))
    assert int(s["requests"]) > 10  # type: ignore[call-overload]
    assert s["errors"] == 0
    # the body is pandas records of 1,001 rows: rows are counted, 1,001 per ok request
    assert s["rows_per_s"] == pytest.approx(1001 * float(s["rps"]), rel=1e-6)  # type: ignore[arg-type]


async def _accept_anything(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """An endpoint that answers 200 to any body (an ad hoc target bench knows nothing about)."""
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


def test_adhoc_rows_of_an_opaque_body_are_missing_not_made_up(tmp_path: Path) -> None:
    """A body bench cannot count rows in: rows/s is not measured — missing in --json, the terminal, Markdown
    and the report's metadata — rather than req/s (1 row a request) or 0."""
    body = tmp_path / "opaque.bin"
    body.write_bytes(b"\x08\x96\x01 not a format bench reads")
    out = tmp_path / "o.arrow"
    with served_asgi(_accept_anything) as base:
        proc = bench("run", "--url", f"{base}/predict", "--body", str(body), "-c", "2", "-d", "1s", "--json",
                     "--out", str(out))
    s = summary_of(proc)
    assert int(s["requests"]) > 10 and s["rps"]  # type: ignore[call-overload]
    assert s["rows_per_s"] is None
    meta = json.loads(ipc.open_file(out).schema.metadata[b"bench.report"])
    assert meta["extra"]["rows"] == "not counted"
    md = bench("report", str(out), "--markdown", str(tmp_path / "o.md"))
    assert md.returncode == 0, md.stderr
    row = next(line for line in (tmp_path / "o.md").read_text().splitlines() if "req/s" not in line and "|" in line
               and line.count("|") > 5 and "---" not in line)
    assert "—" in row


def test_sigint_writes_partial_report(tmp_path: Path) -> None:
    out = tmp_path / "partial.arrow"
    proc = subprocess.Popen([sys.executable, "-m", "bench", "run", "scenarios/quickstart.toml", "--set",
                             'load.duration="60s"', "--out", str(out), "--json"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # wait until load is flowing (first progress line)
            line = proc.stderr.readline()
            if line.startswith("progress:") or not line:
                break
        proc.send_signal(signal.SIGINT)
        stdout, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130
    meta = {r["name"]: json.loads(r["text"]) for r in section(out, "meta")}
    assert meta["partial"] is True
    summary = json.loads(stdout)
    assert summary["partial"] is True


@pytest.mark.parametrize("processes", ["1", "2"])
def test_sigint_stops_a_run_started_with_sigint_ignored(tmp_path: Path, processes: str) -> None:
    """A background job of a script (or a CI runner) starts with SIGINT ignored; `kill -INT` must still stop the
    run with a partial report, as it did for one process: `--processes 2` ran to its end and exited 0."""
    out = tmp_path / "bg.arrow"
    proc = subprocess.Popen([sys.executable, "-m", "bench", "run", "scenarios/quickstart.toml", "--set",
                             'load.duration="60s"', "--set", 'load.warmup="0s"', "--processes", processes, "-q",
                             "--out", str(out)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        deadline = time.monotonic() + 30  # the load is flowing once every process has checkpointed
        names = [f".bg.arrow.w{i}.checkpoint" for i in range(int(processes))] if processes != "1" else \
            [".bg.arrow.checkpoint"]
        while time.monotonic() < deadline and not all((tmp_path / n).exists() and (tmp_path / n).stat().st_size
                                                       for n in names):
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    meta = {r["name"]: json.loads(r["text"]) for r in section(out, "meta")}
    assert meta["partial"] is True


def test_unreachable_target_exits_3_with_a_report(tmp_path: Path) -> None:
    out = tmp_path / "u.arrow"
    proc = bench("run", "--url", "http://127.0.0.1:9/infer", "--body", "data/ccfraud_1k.df.json", "-c", "2",
                 "-d", "1s", "--json", "--out", str(out))
    assert proc.returncode == 3, proc.stderr
    assert "unreachable" in proc.stderr and "connect_refused" in proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["ok"] == 0 and summary["errors"] > 0
    assert out.exists()


def test_http2_flag_alone_gets_an_embedded_emulator_that_speaks_h2c(tmp_path: Path) -> None:
    """`--http2` against url = 'embedded' must not meet an HTTP/1.1-only emulator (that is all protocol errors)."""
    out = tmp_path / "h2.arrow"
    summary = summary_of(bench("run", "scenarios/quickstart.toml", "--http2", *SHORT, "--json", "--quiet",
                               "--out", str(out)))
    assert summary["ok"] > 0  # type: ignore[operator]
    assert summary["errors"] == 0
