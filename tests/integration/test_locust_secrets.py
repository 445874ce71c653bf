"""A Locust worker's own secrets (its environment's token, which the master never sees) must not leave the
worker by value: not in the merged report, nor in the worker's part kept beside it, nor in the master's log.
The target echoes the credential it got (bare, where no pattern finds it) into its 500 answers, as a careless
server does."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.report.reader import read_report
from tests.integration.locust_cluster import Cluster, EchoingTarget, free_port, serving

TOKEN = "wrk-only-s3cret-7f3a9c"  # set in the worker's environment only


@pytest.fixture
def echo() -> Iterator[str]:
    with serving(EchoingTarget()) as server:  # every answer a 500 with the credential echoed
        yield server.url


@pytest.mark.slow  # seconds of real processes: in CI's slow step, out of the default run
def test_worker_secret_never_leaves_the_worker(tmp_path: Path, echo: str) -> None:
    body = tmp_path / "body.json"
    body.write_text('[{"tensor": [1.0]}]')
    sc = tmp_path / "s.toml"
    sc.write_text(f'name = "sec"\n[target]\nkind = "http"\nurl = "{echo}"\ntoken_env = "BENCH_TEST_TOKEN"\n'
                  f'[data]\nbody = "{body}"\n[load]\nconcurrency = 1\nduration = "1s"\n[report]\nraw = true\n')
    cluster = Cluster(tmp_path, env={"BENCH_TEST_TOKEN": ""})  # the master's environment does not hold it
    try:
        port = free_port()
        master = cluster.start("master", "-m", "bench", "run", str(sc), "--locust-master", "--expect-workers", "1",
                               "--master-bind-port", str(port), "--worker-wait", "30", "--json",
                               "-o", str(tmp_path / "run.arrow"), stdout=subprocess.PIPE)
        worker = cluster.worker(port, "w0", env={"BENCH_TEST_TOKEN": TOKEN})
        out, _ = master.communicate(timeout=90)
        log = cluster.log(master)
        assert master.returncode == 3, log  # every answer a 500: nothing succeeded
        report = read_report(tmp_path / "run.arrow")
        samples = [s.detail for s in report.run.error_samples]
        assert samples and all("denied: unknown credential" in d for d in samples), samples
        leaks = {"merged report": (tmp_path / "run.arrow").read_bytes(),
                 "worker part": (tmp_path / "run.workers" / "worker-0.arrow").read_bytes(),
                 "master stdout": out, "master log": log.encode(), "worker log": cluster.log(worker).encode()}
        for where, data in leaks.items():
            assert TOKEN.encode() not in data, where
        assert any("***" in d for d in samples), samples
    finally:
        cluster.close()


def test_locustfile_users_report_is_scrubbed_of_the_token(tmp_path: Path, echo: str) -> None:
    """Stock `locust` with bench users: the report it writes holds no token by value."""
    data = Path(__file__).resolve().parents[2] / "data" / "ccfraud_1k.df.json"
    (tmp_path / "locustfile.py").write_text(f"""
from bench.locust import WallarooUser

class Pipeline(WallarooUser):
    url = {echo!r}
    data = {str(data)!r}
    token_env = "BENCH_TEST_TOKEN"
""")
    out = tmp_path / "users.arrow"
    cluster = Cluster(tmp_path, env={"BENCH_TEST_TOKEN": TOKEN})
    try:
        proc = cluster.start("locust", "-m", "locust", "-f", str(tmp_path / "locustfile.py"), "--headless", "-u", "1",
                             "-r", "1", "-t", "3s", "--bench-report", str(out))
        proc.wait(60)
        assert out.exists(), cluster.log(proc)
        report = read_report(out)
        samples = [s.detail for s in report.run.error_samples]
        assert samples and all("denied: unknown credential" in d for d in samples), samples
        assert TOKEN.encode() not in out.read_bytes()
        assert any("***" in d for d in samples), samples
    finally:
        cluster.close()
