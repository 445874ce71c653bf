"""Short versions of the accuracy/soak benchmarks, opt-in with `pytest -m perf tests/perf/test_perf_smoke.py`.

They drive the real `bench` CLI against loopback servers pinned to CPU 0 (bench on CPU 1), like the scripts, with
a few seconds per run. Bounds are loose (a shared 2-core machine is noisy): they catch a broken pacer, a server
that is not precise, a leak or a multi-process merge that loses requests — not small regressions. The figures
for docs/performance.md come from the scripts.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_accuracy as acc
import bench_soak

pytestmark = [
    pytest.mark.perf,
    pytest.mark.timeout(300),
    pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs (server and client pinned apart)"),
]
needs_nginx = pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx not installed")


@pytest.fixture
def body(tmp_path: Path) -> Path:
    path = tmp_path / "body.json"
    acc.make_body(path)
    return path


@needs_nginx
def test_open_loop_keeps_a_modest_rate(tmp_path: Path, body: Path) -> None:
    rows = acc.bench_open_loop(tmp_path, body, duration=4, rounds=1, rate=5000)
    row = rows[0]
    assert abs(row["error_pct"]) < 1.0, row
    assert row["dropped"] == 0, row
    assert row["lag_p99"] < 5.0, row


def test_fixed_delay_server_and_bench_agree(tmp_path: Path, body: Path) -> None:
    rows = acc.bench_fixed_delay(tmp_path, body, duration=3, rounds=1, rate=200, delay_ms=10.0)
    row = rows[0]
    assert row["errors"] == 0, row
    assert 10.0 <= row["server_p50_ms"] < 10.2, row  # the server itself answers on time
    assert abs(row["overhead_us"]) < 500, row  # bench's p50 is close to the delay


@needs_nginx
def test_two_processes_merge_every_request(tmp_path: Path, body: Path) -> None:
    setups = (acc.PROCESS_SETUPS[0], acc.PROCESS_SETUPS[2])
    rows = acc.bench_processes(tmp_path, body, duration=2, rounds=1, connections=16, setups=setups)
    two = next(r for r in rows if r["processes"] == 2)
    assert two["merged_processes"] == 2, two
    assert two["errors"] == 0 and two["requests"] > 1000, two


@needs_nginx
def test_memory_stays_flat_for_a_short_soak(tmp_path: Path) -> None:
    result = bench_soak.soak(duration=20, rate=1000, interval=1.0, tmp=tmp_path)
    steady = [rss for t, rss in result["samples"] if t >= 5]
    assert max(steady) < 250 * bench_soak.MB, steady
    assert max(steady) <= 1.2 * min(steady), steady


@needs_nginx
@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_big_answers_cost_linear_time_and_flat_memory() -> None:
    """20 MiB answers: bench -c 1 within a loose 3 × curl's p50 (quadratic copying was 1.7 × curl even on a quiet
    machine and grows with the size); at -r 200 RSS stays flat and the run says it was generator-bound."""
    import bench_big

    r = bench_big.answers(20, rounds=1, rate=200, seconds=3)
    curl, fast = r["p50_ms"]["curl"][0], r["p50_ms"]["fast"][0]
    assert fast < 3 * curl, r
    rss = r["rss"]
    assert rss["generator_bound"], rss
    assert rss["rss_max_mb"] < 1.5 * rss["rss_first_mb"] and rss["rss_max_mb"] < 600, rss


def test_big_dataset_is_ready_fast_in_bounded_memory() -> None:
    import bench_big

    r = bench_big.dataset(1_000_000)  # issue 14's case: 1 M rows, one per request, pandas-records
    assert r["ready_s"] < 3.0, r
    assert r["ready_rss_over_file"] < 2.0, r
    assert r["bodies"] == 1_000_000
