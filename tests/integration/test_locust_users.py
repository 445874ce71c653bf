"""bench.locust users in a locustfile under the stock `locust` command (single process, master + 2 workers)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from bench.emulator.config import EmulatorConfig
from bench.report.reader import read_report
from tests.integration.locust_cluster import DATA, ROOT, Cluster, free_port, served


def locustfile(cluster: Cluster, user: str, attributes: str) -> None:
    """A locustfile with one user class: bench.locust's ``user`` with ``attributes`` (one per line)."""
    body = "".join(f"    {line}\n" for line in attributes.strip().splitlines())
    text = f"from bench.locust import {user}\n\n\nclass Test{user}({user}):\n{body}"
    (cluster.tmp / "locustfile.py").write_text(text)


def locust(cluster: Cluster, name: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return cluster.start(name, "-m", "locust", "-f", str(cluster.tmp / "locustfile.py"), *args, env=env,
                         stdout=subprocess.PIPE)


def locust_totals(proc: subprocess.Popen[bytes]) -> tuple[int, int]:
    """(requests, failures) of Locust's own final stats (`--json` on stdout); waits for the process."""
    out, _ = proc.communicate(timeout=60)
    entries = json.loads(out)
    return sum(e["num_requests"] for e in entries), sum(e["num_failures"] for e in entries)


def write_wallaroo_scenario(cluster: Cluster, name: str, url: str, tables: str) -> None:
    """``sc.toml`` in the cluster's directory: a Wallaroo target at ``url`` sending the reference data, plus
    ``tables`` (TOML sections such as ``[auth]`` or ``[engine]``)."""
    (cluster.tmp / "sc.toml").write_text(f"""name = "{name}"
[target]
kind = "wallaroo"
url = "{url}"
[data]
path = "{DATA}"
rows_per_request = 10
{tables}""")


def test_stock_locust_master_and_two_workers_leave_one_bench_report(cluster: Cluster,
                                                                     serve_emulator: Callable[..., str]) -> None:
    base = serve_emulator("--replicas", "8", "--latency-ms", "2")
    d = EmulatorConfig()
    locustfile(cluster, "WallarooUser", f"""
url = "{base}/v1/api/pipelines/infer/{d.deployment}/{d.pipeline}"
data = {str(DATA)!r}
rows_per_request = 10
""")
    port = str(free_port())
    out = cluster.tmp / "locust.arrow"
    master = locust(cluster, "master", "--headless", "--master", "--master-bind-host", "127.0.0.1",
                    "--master-bind-port", port, "--expect-workers", "2", "-u", "4", "-r", "4", "-t", "3s",
                    "--bench-report", str(out), "--json")
    workers = [locust(cluster, f"w{i}", "--worker", "--master-port", port) for i in range(2)]
    locust_stats = locust_totals(master)
    assert master.returncode == 0, cluster.log(master)
    for w in workers:
        assert w.wait(30) == 0, cluster.log(w)
    answered = served(base)  # the emulator's own count
    shown = subprocess.run([sys.executable, "-m", "bench", "report", str(out)], capture_output=True, text=True,
                           cwd=ROOT, timeout=60)
    assert shown.returncode == 0, shown.stderr
    report = read_report(out)
    requests = sum(t.requests for t in report.run.totals.values())
    in_flight = report.run.counters.get("in_flight_at_end", 0)  # sent, stopped unanswered: kind 'abandoned'
    assert requests > in_flight and report.run.total().errors == in_flight
    assert requests - in_flight <= answered <= requests  # every answer the server sent is in the report
    assert report.run.counters["sent"] == requests  # sent = ok + errors + in flight at the end: accounted
    assert len(report.meta.extra["locust"]["workers"]) == 2 and report.meta.extra["locust"]["lost"] == []
    assert not report.run.partial
    assert locust_stats == (requests - in_flight, 0)  # Locust's stats and bench's agree on every answer


def test_ubiops_failed_status_is_a_failure_even_with_http_200(cluster: Cluster,
                                                             serve_emulator: Callable[..., str]) -> None:
    base = serve_emulator("--error-rate", "0.3", "--latency-ms", "1")
    d = EmulatorConfig()
    locustfile(cluster, "UbiOpsUser", f"""
base_url = "{base}/v2.1"
project = "demo"
deployment = "ccfraud"
token_env = "BENCH_TEST_UBIOPS_TOKEN"
data = {str(DATA)!r}
fields = {{"tensor": "tensor"}}
""")
    out = cluster.tmp / "single.arrow"
    proc = locust(cluster, "single", "--headless", "-u", "2", "-r", "2", "-t", "2s", "--bench-report", str(out),
                  "--json", env={"BENCH_TEST_UBIOPS_TOKEN": d.ubiops_token})
    locust_stats = locust_totals(proc)
    report = read_report(out)
    total = report.run.total()
    by_kind = {(e.kind, e.status): e.count for e in report.run.errors}
    in_flight = by_kind.pop(("abandoned", 0), 0)  # users stopped mid-request: sent, never answered
    assert in_flight == report.run.counters.get("in_flight_at_end", 0) <= 2
    assert set(by_kind) == {("request_failed", 200)}, by_kind
    assert total.ok > 0 and total.errors - in_flight == sum(by_kind.values()) > 0
    assert 0.15 < total.errors / total.requests < 0.45  # the emulator fails ~30 %
    # Locust's stats count the same failures (and never see the requests its stop abandoned)
    assert locust_stats == (total.requests - in_flight, total.errors - in_flight)
    assert d.ubiops_token.split()[-1] not in out.read_bytes().decode(errors="replace")


def test_keycloak_tokens_are_fetched_and_refreshed_for_users(cluster: Cluster,
                                                             serve_emulator: Callable[..., str]) -> None:
    base = serve_emulator("--require-token", "--token-ttl", "1", "--latency-ms", "1")
    d = EmulatorConfig()
    write_wallaroo_scenario(cluster, "tokens", f"{base}/v1/api/pipelines/infer/{d.deployment}/{d.pipeline}", f"""[auth]
kind = "password"
token_url = "{base}/auth/realms/master/protocol/openid-connect/token"
client_secret_env = "BENCH_TEST_SECRET"
username = "admin"
password_env = "BENCH_TEST_PASSWORD"
""")
    locustfile(cluster, "WallarooUser", """
scenario = "sc.toml"
""")
    out = cluster.tmp / "tokens.arrow"
    proc = locust(cluster, "single", "--headless", "-u", "2", "-r", "2", "-t", "4s", "--bench-report", str(out),
                  "--json", env={"BENCH_TEST_SECRET": d.client_secret, "BENCH_TEST_PASSWORD": "admin"})
    requests, failures = locust_totals(proc)
    report = read_report(out)
    assert report.run.total().ok == requests > 0 and failures == 0  # every request carried a live token
    assert report.run.counters.get("token_refresh", 0) >= 2  # 1 s tokens, refreshed every 0.8 s, over a run of ~3-4 s
    assert d.client_secret not in out.read_bytes().decode(errors="replace") + cluster.log(proc)


def test_users_trust_the_scenarios_ca_bundle_and_insecure(cluster: Cluster, serve_emulator: Callable[..., str],
                                                          tls_proxy: Callable[[str], tuple[str, Path]]) -> None:
    """A scenario's `[engine] ca_bundle` / `insecure` reach a Locust user's HTTPS client as they reach bench's
    engines: against a private CA, both succeed and a user given neither gets only certificate failures."""
    https, ca_file = tls_proxy(serve_emulator("--latency-ms", "1"))
    d = EmulatorConfig()
    results = {}
    for name, engine in (("bundle", f'ca_bundle = "{ca_file}"'), ("insecure", "insecure = true"), ("none", "")):
        write_wallaroo_scenario(cluster, "tls", f"{https}/v1/api/pipelines/infer/{d.deployment}/{d.pipeline}",
                                f"[engine]\n{engine}\n")
        locustfile(cluster, "WallarooUser", 'scenario = "sc.toml"')
        proc = locust(cluster, name, "--headless", "-u", "2", "-r", "2", "-t", "2s", "--bench-report",
                      str(cluster.tmp / f"{name}.arrow"), "--json")
        results[name] = locust_totals(proc)
    for name in ("bundle", "insecure"):
        requests, failures = results[name]
        assert requests > 0 and failures == 0, (name, results)
    requests, failures = results["none"]
    assert requests > 0 and failures == requests, results  # verification stays on by default


def test_a_locust_run_where_nothing_succeeded_exits_nonzero(cluster: Cluster,
                                                          fault_emulator: Callable[..., str]) -> None:
    """Every request stalls: Locust's own stats show no failure (its users were stopped mid-request), the bench
    report shows them all in flight at the end, and the process exits 3 (a CI gate must not pass it)."""
    base = fault_emulator("stall:1.0")
    d = EmulatorConfig()
    locustfile(cluster, "WallarooUser", f"""
url = "{base}/v1/api/pipelines/infer/{d.deployment}/{d.pipeline}"
data = {str(DATA)!r}
rows_per_request = 10
""")
    out = cluster.tmp / "locust.arrow"
    proc = locust(cluster, "single", "--headless", "-u", "2", "-r", "2", "-t", "1s", "--bench-report", str(out),
                  "--json")
    assert locust_totals(proc) == (0, 0)
    assert proc.returncode == 3, cluster.log(proc)
    assert "no successful answer" in cluster.log(proc)
    report = read_report(out)
    assert report.run.counters["sent"] == report.run.counters["in_flight_at_end"] == 2  # one per user
