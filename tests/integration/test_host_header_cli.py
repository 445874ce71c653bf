"""`bench run` with a Host header sends it and records it in the report; headers bench sets itself (Content-Length,
Transfer-Encoding, Connection, pseudo-headers, …) are refused in one line with exit 2 before any request, instead of
being dropped without a word."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.report.reader import read_report
from tests.integration.locust_cluster import recording_target

ROOT = Path(__file__).resolve().parents[2]
Target = tuple[str, list[tuple[str, str]]]  # the URL, and (path, Host) of each request it got


@pytest.fixture
def target() -> Iterator[Target]:
    with recording_target() as (url, seen):
        yield url, seen


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bench", "run", *args], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})


def test_host_header_is_sent_and_recorded(tmp_path: Path, target: Target) -> None:
    url, seen = target
    (tmp_path / "b.json").write_text("{}")
    proc = _run(tmp_path, "--url", url, "--body", "b.json", "-H", "Host: model.default.example.com", "-c", "1",
                "-n", "3", "--warmup", "0s", "-q", "--out", "r.arrow")
    assert proc.returncode == 0, proc.stderr
    assert [host for _, host in seen] == ["model.default.example.com"] * 3
    assert read_report(tmp_path / "r.arrow").meta.target["host"] == "model.default.example.com"


@pytest.mark.parametrize("header", ["Content-Length: 5", "transfer-encoding: chunked", "Connection: close",
                                    "Upgrade: h2c", "TE: trailers", ":authority: model.example.com",
                                    "Host: model.example.com/path", "Host: "])
def test_headers_bench_sets_itself_are_refused(tmp_path: Path, target: Target, header: str) -> None:
    url, seen = target
    (tmp_path / "b.json").write_text("{}")
    proc = _run(tmp_path, "--url", url, "--body", "b.json", "-H", header, "-n", "1", "-q", "--out", "r.arrow")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    name = header.split(":")[0] if not header.startswith(":") else "pseudo-header"
    assert name in lines[0] and ("cannot be set" in lines[0] or "host:port" in lines[0]), lines[0]
    assert seen == [] and not (tmp_path / "r.arrow").exists()


def test_a_scenario_file_header_is_refused_naming_file_and_key(tmp_path: Path, target: Target) -> None:
    url, seen = target
    (tmp_path / "b.json").write_text("{}")
    (tmp_path / "s.toml").write_text(f'[target]\nkind = "http"\nurl = "{url}"\n'
                                     '[target.headers]\nTransfer-Encoding = "chunked"\n'
                                     '[data]\nbody = "b.json"\n[load]\nconcurrency = 1\nrequests = 1\n')
    proc = _run(tmp_path, "s.toml", "-q", "--out", "r.arrow")
    assert proc.returncode == 2, proc.stderr
    assert "s.toml" in proc.stderr and "target.headers.Transfer-Encoding" in proc.stderr, proc.stderr
    assert "Content-Length" in proc.stderr and seen == []
