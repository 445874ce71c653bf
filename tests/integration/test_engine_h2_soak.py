"""Memory of the lean HTTP/2 engine over a long fault-free run (opt-in: ``pytest -m soak``, ~75 s).

The real CLI (`bench run --http2 -c 8`) against the real emulator serving h2c (`bench serve --http2`, hypercorn),
the bench process's RSS sampled every second. A leak of per-stream or per-connection state (what a report of
~5 MB a minute pointed at) shows as steady growth after start-up; the fast engine is run alongside as the peer.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOAK_S = 60
BODY = json.dumps([{"tensor": [0.1] * 29}])

pytestmark = [pytest.mark.soak, pytest.mark.timeout(300)]


def run_sampled(cmd: list[str], every_s: float = 1.0) -> tuple[int, str, str, list[float]]:
    """Run ``cmd``; its RSS (MB) every ``every_s`` seconds while it runs."""
    import psutil

    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    samples: list[float] = []
    done = threading.Event()

    def sample() -> None:
        try:
            ps = psutil.Process(proc.pid)
            while not done.wait(every_s):
                samples.append(ps.memory_info().rss / 1e6)
        except psutil.Error:
            return

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        out, err = proc.communicate(timeout=SOAK_S + 120)
    finally:
        done.set()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        t.join(5)
    return proc.returncode, out, err, samples


@pytest.mark.parametrize("engine", ["h2", "fast"])
def test_memory_stays_flat_over_a_minute_without_faults(engine: str, tmp_path: Path,
                                                        serve_emulator: Callable[..., str]) -> None:
    base = serve_emulator("--http2", "--latency-ms", "1", "--jitter", "0", "--replicas", "8")
    body = tmp_path / "body.json"
    body.write_text(BODY)
    flags = ["--http2"] if engine == "h2" else ["--engine", "fast"]
    t0 = time.monotonic()
    rc, out, err, rss = run_sampled([sys.executable, "-m", "bench", "run", "--url", f"{base}/infer", "--body",
                                     str(body), "-H", "Content-Type: application/json", "-c", "8", "-d",
                                     f"{SOAK_S}s", "--warmup", "0s", "--json", "--quiet", "--out",
                                     str(tmp_path / "soak.arrow"), *flags])
    assert rc == 0, err[-800:]
    s = json.loads(out.strip().splitlines()[-1])
    assert s["errors"] == 0 and s["ok"] > 5_000, s
    assert len(rss) >= SOAK_S - 5, (len(rss), time.monotonic() - t0)
    settled = rss[10:SOAK_S]
    growth = max(settled) - settled[0]
    print(f"soak {engine}: {s['ok']} requests, RSS {rss[0]:.1f} -> {settled[0]:.1f} (10 s) -> {settled[-1]:.1f} MB "
          f"(max {max(rss):.1f}); growth after 10 s {growth:.2f} MB")
    # a 5 MB/min leak grows ~4 MB over these 50 s; allocator noise on this path is ~0.5 MB
    assert growth < 2.5, f"RSS grew {growth:.1f} MB after start-up: {[round(x, 1) for x in rss]}"
