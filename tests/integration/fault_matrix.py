"""Helpers of the fault matrix (test_fault_matrix.py): start emulators with faults, run the real `bench run` CLI
against them, and read the server's own counts from its /metrics. Not a test module itself.

All engines of one fault run at the same time, each against its own emulator, so the matrix costs one run's
wall time per fault rather than one per (fault, engine).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
BODY = json.dumps([{"tensor": [0.1] * 29}])


@dataclass(frozen=True)
class Engine:
    name: str
    run_args: tuple[str, ...]
    serve_args: tuple[str, ...] = ()


ENGINES = {
    "fast": Engine("fast", ("--engine", "fast")),
    "httpx": Engine("httpx", ("--engine", "httpx")),
    "h2": Engine("h2", ("--http2",), ("--http2",)),  # the fast engine's HTTP/2 (H2Engine) against h2c
}


@dataclass
class RunResult:
    rc: int
    wall_s: float
    stdout: str
    stderr: str
    received: float  # the server's emulator_requests_received_total during the run
    faults: dict[str, float]  # the server's emulator_faults_injected_total by fault during the run
    abandoned: int  # the report's extra.abandoned (requests in flight when the run ended)
    peak_rss_mb: list[float] = field(default_factory=list)  # bench process RSS samples (soak)

    @property
    def summary(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.stdout)
        return data


def parse_prometheus(text: str) -> dict[str, float]:
    """``name{labels}`` → value for every sample line (comments skipped); a tiny text-format parser."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        out[key] = float(value)
    return out


def scrape(client: httpx.Client, base: str) -> dict[str, float]:
    """The emulator's metrics over the scraper's own kept-alive connection: the emulator's first connection,
    which ``accept_reset:…:spare=1`` never resets."""
    return parse_prometheus(client.get(f"{base}/metrics").text)


def faults_by_name(metrics: dict[str, float]) -> dict[str, float]:
    prefix = 'emulator_faults_injected_total{fault="'
    return {k[len(prefix):-2]: v for k, v in metrics.items() if k.startswith(prefix)}


class Emulator:
    """`bench serve --port 0 --fault SPEC ...` as a child process; ``stop()`` always ends it."""

    def __init__(self, spec: str, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "bench", "serve", "--port", "0", "--fault", spec, *args],
                                     cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.base = ""

    def wait_listening(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.startswith("bench emulator listening on http://127.0.0.1:"), line
        self.base = line.split()[-1]
        return self.base

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def _sample_rss(pid: int, out: list[float], done: threading.Event, every_s: float) -> None:
    import psutil

    try:
        proc = psutil.Process(pid)
        while not done.wait(every_s):
            out.append(proc.memory_info().rss / 1e6)
    except psutil.Error:
        return


def run_group(spec: str, engines: list[Engine], load: list[str], workdir: Path, timeout_s: float,
              sample_rss_every_s: float = 0.0) -> dict[str, RunResult]:
    """Run every engine against its own emulator serving ``spec``, all at once; results by engine name."""
    body = workdir / "body.json"
    body.write_text(BODY)
    emulators = {e.name: Emulator(spec, *e.serve_args) for e in engines}
    scrapers: dict[str, httpx.Client] = {}
    results: dict[str, RunResult] = {}
    try:
        bases = {name: emu.wait_listening() for name, emu in emulators.items()}
        for name in bases:
            scrapers[name] = httpx.Client(timeout=10, limits=httpx.Limits(max_connections=1, keepalive_expiry=600))
        before = {name: scrape(scrapers[name], base) for name, base in bases.items()}
        procs: dict[str, tuple[subprocess.Popen[str], float, Path]] = {}
        samplers: list[tuple[threading.Thread, threading.Event]] = []
        rss: dict[str, list[float]] = {}
        for e in engines:
            out = workdir / f"{e.name}.arrow"
            cmd = [sys.executable, "-m", "bench", "run", "--url", f"{bases[e.name]}/infer", "--body", str(body),
                   "-H", "Content-Type: application/json", *load, "--warmup", "0s", "--json", "--quiet",
                   "--out", str(out), *e.run_args]
            proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    env=os.environ.copy())
            procs[e.name] = (proc, time.monotonic(), out)
            if sample_rss_every_s:
                rss[e.name] = []
                done = threading.Event()
                t = threading.Thread(target=_sample_rss, args=(proc.pid, rss[e.name], done, sample_rss_every_s),
                                     daemon=True)
                t.start()
                samplers.append((t, done))
        for name, (proc, t0, out) in procs.items():
            try:
                stdout, stderr = proc.communicate(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                stdout, stderr = proc.communicate()
            wall = time.monotonic() - t0
            after = scrape(scrapers[name], bases[name])
            received = after.get("emulator_requests_received_total", 0.0) - before[name].get(
                "emulator_requests_received_total", 0.0)
            was = faults_by_name(before[name])
            faults = {k: v - was.get(k, 0.0) for k, v in faults_by_name(after).items()}
            results[name] = RunResult(proc.returncode, wall, stdout, stderr, received, faults, _abandoned(out),
                                      rss.get(name, []))
        for t, done in samplers:
            done.set()
            t.join(5)
    finally:
        for client in scrapers.values():
            client.close()
        for emu in emulators.values():
            emu.stop()
    return results


def _abandoned(report: Path) -> int:
    """extra.abandoned from the report's metadata (0 when the report is missing or has none)."""
    if not report.exists():
        return 0
    from bench.report.reader import read_report

    extra = read_report(report).meta.extra or {}
    value = extra.get("abandoned", 0)
    return int(value) if isinstance(value, int) else 0
