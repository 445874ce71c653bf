"""`bench run` refuses open-loop settings on a closed loop (they would be ignored: a different test than asked
for), naming the flag or the file's key, exit 2; a switch to a closed loop from the command line drops the file's
open-loop keys instead. The real CLI, the embedded emulator on loopback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pyarrow.ipc as ipc
import pytest

ROOT = Path(__file__).resolve().parents[2]

OPEN = """name = "open"
[target]
url = "embedded"
[data]
generate = 50
[load]
rate = 200
arrival = "poisson"
max_in_flight = 16
duration = "1s"
[engine]
pacing = "spin"
"""
CLOSED = OPEN.replace('rate = 200\narrival = "poisson"\nmax_in_flight = 16', "concurrency = 2").replace(
    '[engine]\npacing = "spin"\n', "")


def bench(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bench", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=90, env={**os.environ, "PYTHONPATH": str(ROOT)})


def one_line_error(proc: subprocess.CompletedProcess[str], *words: str) -> None:
    err = proc.stderr.strip()
    assert proc.returncode == 2, (proc.returncode, err[-2000:])
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for word in words:
        assert word in err, err


@pytest.mark.parametrize(("text", "args", "words"), [
    (CLOSED, ["--poisson"], ("--poisson", "open loop", "closed loop of 2 clients")),
    (CLOSED, ["--pacing", "spin"], ("--pacing", "open loop")),
    (OPEN, ["-c", "3", "--poisson"], ("--poisson", "closed loop of 3 clients")),
    (OPEN, ["--set", "load.concurrency=3", "--pacing", "sleep"], ("--pacing",)),
    (CLOSED, ["--set", "load.max_in_flight=8"], ("s.toml", "load.max_in_flight", "open loop")),
    (CLOSED.replace("concurrency = 2", 'concurrency = 2\narrival = "poisson"'), [], ("s.toml", "load.arrival")),
    (CLOSED.replace("concurrency = 2", 'concurrency = 2\narrival = "poisson"'), ["-c", "4"],
     ("s.toml", "load.arrival")),  # the file's own contradiction is not hidden by -c
    (CLOSED, ["--connections", "1"], ("--connections", "closed loop of 2 clients over HTTP/1.1")),
    (OPEN, ["-c", "8", "--connections", "2"], ("--connections", "closed loop of 8 clients")),
    (CLOSED + "[engine]\nconnections = 4\n", [], ("s.toml: engine.connections", "closed loop over HTTP/1.1")),
    (CLOSED, ["--set", "engine.connections=4"], ("s.toml: engine.connections", "load.concurrency = 2")),
    (CLOSED + "[engine]\nconnections = 4\nhttp2 = true\n", ["--set", "engine.http2=false"],
     ("s.toml: engine.connections",)),
], ids=["poisson", "pacing", "c-poisson", "set-c-pacing", "set-max-in-flight", "file-arrival", "file-arrival-c",
        "connections", "c-connections", "file-connections", "set-connections", "file-connections-set-http1"])
def test_open_loop_settings_on_a_closed_loop_are_refused(tmp_path: Path, text: str, args: list[str],
                                                         words: tuple[str, ...]) -> None:
    (tmp_path / "s.toml").write_text(text)
    one_line_error(bench("run", "s.toml", *args, cwd=tmp_path), *words)


def test_adhoc_default_closed_loop_refuses_poisson(tmp_path: Path) -> None:
    (tmp_path / "b.json").write_text("{}")
    one_line_error(bench("run", "--url", "http://127.0.0.1:9/x", "--body", "b.json", "--poisson", cwd=tmp_path),
                   "--poisson", "closed loop of 8 clients")


@pytest.mark.parametrize("switch", [["-c", "2"], ["--set", "load.concurrency=2"]])
def test_switch_to_a_closed_loop_drops_the_files_open_loop_keys(tmp_path: Path, switch: list[str]) -> None:
    (tmp_path / "s.toml").write_text(OPEN + "connections = 4\n")
    proc = bench("run", "s.toml", *switch, "-n", "20", "--json", "--quiet", "--out", "r.arrow", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["accounting"]["sent"] == 20
    rows = ipc.open_file(str(tmp_path / "r.arrow")).read_all().to_pylist()
    load = json.loads(next(r["text"] for r in rows if r["section"] == "meta" and r["name"] == "load"))
    assert (load["mode"], load["concurrency"], load["arrival"], load["max_in_flight"]) == ("closed", 2, "constant", 0)
    text = json.loads(next(r["text"] for r in rows if r["section"] == "meta" and r["name"] == "scenario_text"))
    assert tomllib.loads(text)["engine"] == {}, text  # pacing and (HTTP/1.1) connections dropped


@pytest.mark.parametrize("switch", [["-c", "2"], ["--set", "load.concurrency=2"],
                                    ["-c", "2", "--set", "engine.http2=true"]])
def test_switch_to_a_closed_http2_loop_keeps_the_files_connections(tmp_path: Path, switch: list[str]) -> None:
    """An HTTP/2 closed loop shares engine.connections, so the switch keeps it (also when the command line is what
    asks for HTTP/2): the stored scenario still has it."""
    http2 = "" if "engine.http2=true" in switch else "http2 = true\n"
    (tmp_path / "s.toml").write_text(OPEN + f"connections = 2\n{http2}")
    proc = bench("run", "s.toml", *switch, "-n", "10", "--json", "--quiet", "--out", "r.arrow", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = ipc.open_file(str(tmp_path / "r.arrow")).read_all().to_pylist()
    text = json.loads(next(r["text"] for r in rows if r["section"] == "meta" and r["name"] == "scenario_text"))
    engine = tomllib.loads(text)["engine"]
    assert (engine.get("connections"), engine.get("http2"), "pacing" in engine) == (2, True, False), engine


@pytest.mark.parametrize(("args", "words"), [
    (["--rate", "0"], ("s.toml", "load.rate", "must be > 0")),
    (["--set", "load.rate=0"], ("s.toml", "load.rate", "must be > 0")),
    (["--set", "load.stages=[{duration='1s', rate=0}]"], ("s.toml", "load.stages", "every stage's rate is 0")),
], ids=["rate-flag", "set-rate", "zero-stages"])
def test_a_zero_rate_names_load_rate(tmp_path: Path, args: list[str], words: tuple[str, ...]) -> None:
    (tmp_path / "s.toml").write_text(CLOSED)
    proc = bench("run", "s.toml", *args, "--out", "r.arrow", cwd=tmp_path)
    one_line_error(proc, *words)
    assert "load.concurrency" not in proc.stderr and not (tmp_path / "r.arrow").exists()


def test_connections_on_a_closed_http2_loop_is_kept(tmp_path: Path) -> None:
    """HTTP/2 shares engine.connections in a closed loop too: there --connections is no contradiction."""
    (tmp_path / "s.toml").write_text(CLOSED)
    proc = bench("run", "s.toml", "--http2", "--connections", "2", "-n", "10", "--json", "--quiet", "--out", "r.arrow",
                 cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["accounting"]["sent"] == 10
