"""A scenario's TLS trust (`[engine] ca_bundle` / `insecure`) reaches every client of a run, through the real CLI.

The target is the real emulator (`bench serve`) behind a TLS-terminating proxy with a private CA (trustme) on
loopback. A KServe run calls the server's readiness and metadata routes before any load and scrapes its /metrics
during it: those calls used httpx's default trust store, so a server with a private CA failed the readiness check
however the scenario set its trust.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(tmp_path: Path, https: str, *extra: str) -> subprocess.CompletedProcess[str]:
    out = tmp_path / "run.arrow"
    args = [sys.executable, "-m", "bench", "run", str(ROOT / "scenarios" / "kserve.toml"),
            "--set", f"target.url={https}", "--set", f"server_metrics.url={https}/metrics",
            "--set", "load.concurrency=2", "-d", "1s", "--warmup", "0s", "--quiet", "--json", "--out", str(out), *extra]
    return subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=tmp_path)


def test_ca_bundle_is_trusted_by_the_preflight_the_engine_and_the_scrape(
        serve_emulator: Callable[..., str], tls_proxy: Callable[[str], tuple[str, Path]], tmp_path: Path) -> None:
    https, ca_file = tls_proxy(serve_emulator())
    proc = _run(tmp_path, https, "--set", f"engine.ca_bundle={ca_file}")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["ok"] > 0 and summary["errors"] == 0
    assert summary["server_ms"] is not None, summary  # the scrape over TLS got the server's histogram


def test_insecure_reaches_the_preflight_too(serve_emulator: Callable[..., str],
                                            tls_proxy: Callable[[str], tuple[str, Path]], tmp_path: Path) -> None:
    https, _ = tls_proxy(serve_emulator())
    proc = _run(tmp_path, https, "--insecure")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["ok"] > 0


def test_without_trust_the_private_certificate_is_refused_before_any_load(
        serve_emulator: Callable[..., str], tls_proxy: Callable[[str], tuple[str, Path]], tmp_path: Path) -> None:
    """Verification stays on by default: the readiness check names the certificate failure, exit 3."""
    https, _ = tls_proxy(serve_emulator())
    proc = _run(tmp_path, https)  # (the readiness wait is 30 s: a certificate failure must not wait it out)
    assert proc.returncode == 3, proc.stderr
    assert "CERTIFICATE_VERIFY_FAILED" in proc.stderr and "Traceback" not in proc.stderr
    assert "--ca-bundle" in proc.stderr and "not ready after" not in proc.stderr


@pytest.mark.parametrize(("value", "problem"), [("missing.pem", "no such file"),
                                                ("bad.pem", "no PEM certificate could be read")])
def test_a_ca_bundle_that_cannot_be_read_is_one_line_and_exit_2(tmp_path: Path, value: str, problem: str) -> None:
    (tmp_path / "bad.pem").write_text("-----BEGIN CERTIFICATE-----\nnot base64\n")
    scenario = tmp_path / "s.toml"
    scenario.write_text(f'[target]\nkind = "http"\nurl = "https://127.0.0.1:9/x"\n[data]\nbody = "b.json"\n[load]\n'
                        f'concurrency = 1\nduration = "1s"\n[engine]\nca_bundle = "{value}"\n')
    (tmp_path / "b.json").write_text("{}")
    proc = subprocess.run([sys.executable, "-m", "bench", "run", str(scenario)], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)  # not the scenario's folder: the path is relative to the file
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "engine.ca_bundle" in lines[0] and problem in lines[0], proc.stderr
    assert str(tmp_path / value) in lines[0] and str(scenario) in lines[0]


def test_ubiops_batch_mode_trusts_the_ca_bundle(serve_emulator: Callable[..., str],
                                                tls_proxy: Callable[[str], tuple[str, Path]], tmp_path: Path) -> None:
    """Batch mode's create and collect calls go through bench's UbiOps client, not an engine: it used httpx's
    default trust store, so a private CA failed every call."""
    from bench.emulator.config import EmulatorConfig

    https, ca_file = tls_proxy(serve_emulator("--latency-ms", "1"))
    out = tmp_path / "batch.arrow"
    args = [sys.executable, "-m", "bench", "run", str(ROOT / "scenarios" / "ubiops-batch.toml"),
            "--set", f"target.url={https}/v2.1", "--set", f"engine.ca_bundle={ca_file}", "-d", "2s",
            "--warmup", "0s", "--quiet", "--json", "--out", str(out)]
    env = {**os.environ, "UBIOPS_TOKEN": EmulatorConfig().ubiops_token}
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["ok"] > 0 and summary["errors"] == 0, summary


def test_ca_bundle_flag_of_an_ad_hoc_run_is_relative_to_where_it_was_typed(
        serve_emulator: Callable[..., str], tls_proxy: Callable[[str], tuple[str, Path]], tmp_path: Path) -> None:
    from bench.emulator.config import EmulatorConfig

    https, ca_file = tls_proxy(serve_emulator("--latency-ms", "1"))
    d = EmulatorConfig()
    url = f"{https}/v1/api/pipelines/infer/{d.deployment}/{d.pipeline}"
    args = [sys.executable, "-m", "bench", "run", "--url", url, "--body", str(ROOT / "data" / "ccfraud_1k.df.json"),
            "-c", "2", "-d", "1s", "--warmup", "0s", "--quiet", "--json", "--out", str(tmp_path / "r.arrow")]
    trusted = subprocess.run([*args, "--ca-bundle", ca_file.name], capture_output=True, text=True, timeout=120,
                             cwd=ca_file.parent)
    assert trusted.returncode == 0, trusted.stderr
    assert json.loads(trusted.stdout)["ok"] > 0
    refused = subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=ca_file.parent)
    assert refused.returncode == 3 and "tls_error" in refused.stderr, refused.stderr  # verification is on
    assert "--ca-bundle" in refused.stderr.strip().splitlines()[-1]  # and the error line says what to do


@pytest.mark.slow  # seconds of real processes: in CI's slow step, out of the default run
def test_calibrate_trusts_a_ca_bundle_and_says_what_to_do_without(
        serve_emulator: Callable[..., str], tls_proxy: Callable[[str], tuple[str, Path]], tmp_path: Path) -> None:
    """`bench calibrate --url https://...` against a private CA: with --ca-bundle it measures; without, every
    request fails on the certificate and the error line says so (exit 3); a bundle it cannot read: exit 2."""
    from bench.emulator.config import EmulatorConfig

    https, ca_file = tls_proxy(serve_emulator("--latency-ms", "1"))
    d = EmulatorConfig()
    url = f"{https}/v1/api/pipelines/infer/{d.deployment}/{d.pipeline}"
    args = [sys.executable, "-m", "bench", "calibrate", "--url", url, "--body",
            str(ROOT / "data" / "ccfraud_1k.df.json"), "--connections", "2", "--duration", "0.5s", "--json"]
    trusted = subprocess.run([*args, "--ca-bundle", ca_file.name], capture_output=True, text=True, timeout=120,
                             cwd=ca_file.parent)
    assert trusted.returncode == 0, trusted.stderr
    r = json.loads(trusted.stdout)
    assert r["requests"] > 0 and r["errors"] == 0 and r["ceiling_req_per_s_per_core"] is not None, r
    refused = subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=ca_file.parent)
    assert refused.returncode == 3, refused.stderr
    assert "--ca-bundle" in refused.stderr and "Traceback" not in refused.stderr, refused.stderr
    bad = subprocess.run([*args, "--ca-bundle", "nowhere.pem"], capture_output=True, text=True, timeout=60,
                         cwd=tmp_path)
    assert bad.returncode == 2 and "--ca-bundle" in bad.stderr and "no such file" in bad.stderr, bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr


@pytest.mark.anyio
async def test_wallaroo_preflight_trusts_the_bundle_and_fails_at_once_without(
        serve_emulator: Callable[..., str], tls_proxy: Callable[[str], tuple[str, Path]]) -> None:
    """The MLOps API over TLS: trusted through the bundle; without it a certificate failure is final at once
    (it used to be retried as 'unreachable' for the whole wait)."""
    import time

    from bench.emulator.config import EmulatorConfig
    from bench.errors import RunInvalid
    from bench.preflight import PreflightConfig, run_preflight
    from bench.tlstrust import TlsTrust

    https, ca_file = tls_proxy(serve_emulator())
    cfg = PreflightConfig(api_url=https, deployment=EmulatorConfig().deployment, wait_s=30, poll_interval_s=0.1)
    lines: list[str] = []
    trusted = TlsTrust(ca_bundle=str(ca_file)).context(target=False)
    assert await run_preflight(cfg, lambda: "", progress=lines.append, target_url="https://x/i", verify=trusted) \
        is None
    assert lines and lines[-1].endswith("is Running")
    started = time.monotonic()
    with pytest.raises(RunInvalid, match="certificate is not trusted"):
        await run_preflight(cfg, lambda: "", progress=lines.append, target_url="https://x/i")
    assert time.monotonic() - started < 10  # not the 30 s wait
