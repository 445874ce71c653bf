"""Input `bench run` used to accept and then ignore or misreport, through the real CLI on loopback: refused in one
line with exit 2 before any load (rows_per_request beyond the data, port 0, master-only flags without
--locust-master, --processes or load.processes with it), or said once on stderr and noted in the report (a
[server_metrics] URL that never answered)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from bench.report.reader import read_report
from tests.integration.locust_cluster import free_port

ROOT = Path(__file__).resolve().parents[2]
SCENARIO = """name = "s"
[target]
url = "embedded"
[data]
generate = 50
rows_per_request = 10
[load]
concurrency = 1
duration = "1s"
warmup = "0s"
"""


def bench(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bench", "run", *args], capture_output=True, text=True,
                          cwd=tmp_path, timeout=90, env={**os.environ, "PYTHONPATH": str(ROOT)})


def one_line_error(proc: subprocess.CompletedProcess[str], *words: str) -> None:
    err = proc.stderr.strip()
    assert proc.returncode == 2, (proc.returncode, err[-2000:])
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for word in words:
        assert word in err, err


@pytest.mark.parametrize(("args", "words"), [
    (["--set", "data.rows_per_request=100000"], ("s.toml", "data.rows_per_request", "100,000", "50 generated rows")),
    (["--set", 'target.url="http://127.0.0.1:0/infer"'], ("s.toml", "target.url", "port 0")),
    (["--expect-workers", "5"], ("--expect-workers", "--locust-master")),
    (["--worker-wait", "5"], ("--worker-wait", "--locust-master")),
    (["--locust-master", "--processes", "2"], ("--processes", "locust-worker")),
], ids=["rows-beyond-data", "port-0", "expect-workers", "worker-wait", "master-processes"])
def test_ignored_input_is_refused(tmp_path: Path, args: list[str], words: tuple[str, ...]) -> None:
    (tmp_path / "s.toml").write_text(SCENARIO)
    proc = bench(tmp_path, "s.toml", *args, "-q", "--out", "r.arrow")
    one_line_error(proc, *words)
    assert not (tmp_path / "r.arrow").exists()


@pytest.mark.parametrize("args", [[], ["--set", "load.processes=2"]], ids=["file", "set"])
def test_load_processes_on_a_locust_master_is_refused(tmp_path: Path, args: list[str]) -> None:
    """A master's load comes from its workers, each running its share in one engine process: the scenario's
    load.processes would be ignored, as --processes would. Refused before the master binds its port (a free one,
    and a short --worker-wait, in case it did not)."""
    text = SCENARIO.replace("concurrency = 1", "concurrency = 2") + ("processes = 2\n" if not args else "")
    (tmp_path / "s.toml").write_text(text)
    proc = bench(tmp_path, "s.toml", "--locust-master", "--master-bind-port", str(free_port()), "--worker-wait", "1",
                 *args, "-q", "--out", "r.arrow")
    one_line_error(proc, "s.toml: load.processes", "locust-worker")
    assert not (tmp_path / "r.arrow").exists()


def test_rows_per_request_equal_to_the_data_is_fine(tmp_path: Path) -> None:
    (tmp_path / "s.toml").write_text(SCENARIO)
    proc = bench(tmp_path, "s.toml", "--set", "data.rows_per_request=50", "-n", "3", "-q", "--out", "r.arrow")
    assert proc.returncode == 0, proc.stderr
    assert read_report(tmp_path / "r.arrow").meta.load["rows_per_request"] == 50


def test_a_server_metrics_url_that_never_answers_is_said_once_and_noted(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on: bound, never listening, so connects are refused
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/metrics"
        (tmp_path / "s.toml").write_text(SCENARIO + f'[server_metrics]\nurl = "{url}"\ninterval = "0.2s"\n')
        proc = bench(tmp_path, "s.toml", "-q", "--out", "r.arrow")
    assert proc.returncode == 0, proc.stderr
    warnings = [ln for ln in proc.stderr.splitlines() if "[server_metrics]" in ln]
    assert len(warnings) == 1 and warnings[0].startswith("bench: warning:") and url in warnings[0], proc.stderr
    info = read_report(tmp_path / "r.arrow").meta.extra["server_metrics"]
    assert info["scrapes"] == 0 and info["scrape_errors"] > 0 and "no scrape" in info["warning"]
