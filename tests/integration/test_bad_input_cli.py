"""Bad input through the real CLI: every command exits 2 with one line on stderr naming the file or flag and the
key, and never a traceback — for hand-picked cases (issue 15: non-UTF-8 scenario, `--url 'http://[::1/ok'`, bad
tensors; the input audit: out-of-range ports, seeds, waits and [emulator] values) and for scenario files fuzzed by
hypothesis."""

from __future__ import annotations

import math
import os
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from bench.data import write_dataset
from bench.errors import InputError
from bench.scenario import load_scenario

ROOT = Path(__file__).resolve().parents[2]


def bench(*args: str, cwd: Path, env: dict[str, str] | None = None,
          preexec_fn: Callable[[], None] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bench", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
                          preexec_fn=preexec_fn)


def assert_input_error(proc: subprocess.CompletedProcess[str], *words: str) -> None:
    err = proc.stderr.strip()
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-500:], err[-2000:])
    assert "Traceback" not in proc.stderr + proc.stdout
    assert len(err.splitlines()) == 1, err
    for word in words:
        assert word in err, err


def test_non_utf8_scenario(tmp_path: Path) -> None:
    p = tmp_path / "latin1.toml"
    p.write_bytes(b'name = "caf\xe9"\n[load]\nconcurrency = 1\n')
    assert_input_error(bench("run", str(p), cwd=tmp_path), str(p), "not UTF-8", "line 1")


@pytest.mark.parametrize(("url", "words"), [
    ("http://[::1/ok", ("target.url", "not a valid URL")),
    ("127.0.0.1:9/x", ("target.url", "scheme")),
    ("file:///etc/passwd", ("target.url", "http or https")),
    ("http://127.0.0.1:70000/x", ("target.url", "Port out of range")),
])
def test_bad_urls(tmp_path: Path, url: str, words: tuple[str, ...]) -> None:
    body = tmp_path / "b.json"
    body.write_text("{}")
    assert_input_error(bench("run", "--url", url, "--body", str(body), "-d", "1s", cwd=tmp_path), *words)


@pytest.mark.parametrize(("rows", "words"), [
    ([[1.0, 2.0], [math.nan, 2.0]], ("tensor", "row 1", "NaN")),
    ([[1.0, 2.0], [math.inf, 2.0]], ("tensor", "row 1", "inf")),
    ([[1.0, 2.0], None], ("tensor", "row 1", "null")),
    ([[1.0, 2.0], [1.0, 2.0], [1.0]], ("tensor", "row 2", "ragged")),
])
def test_bad_tensors_fail_before_the_run(tmp_path: Path, rows: list[object], words: tuple[str, ...]) -> None:
    data = tmp_path / "bad.arrow"
    write_dataset(pa.table({"tensor": pa.array(rows, type=pa.list_(pa.float32()))}), data)
    sc = tmp_path / "s.toml"
    sc.write_text(f'[target]\nurl = "embedded"\n[data]\npath = "{data.name}"\n[load]\nconcurrency = 1\n'
                  'duration = "1s"\n')
    assert_input_error(bench("run", str(sc), "-q", cwd=tmp_path), str(data), *words)


def test_strings_where_floats_are_expected(tmp_path: Path) -> None:
    data = tmp_path / "mixed.df.json"
    data.write_text('[{"tensor": [1.0, 2.0]}, {"tensor": [1.0, "two"]}]')
    assert_input_error(bench("run", "--url", "embedded", "--body", str(data), "-d", "1s", "-q", cwd=tmp_path),
                       str(data), "'two'")


@pytest.mark.parametrize(("override", "key"), [
    ('target.fields={tensr = "tensor"}', "target.fields.tensr"),
    ("data.rows_per_request=2", "data.rows_per_request"),
])
def test_ubiops_data_errors_name_the_scenario_file(tmp_path: Path, override: str, key: str) -> None:
    """A UbiOps key checked against the data set named no file ('bench: error: target.fields.tensr: ...')."""
    scenario = ROOT / "scenarios" / "ubiops-batch.toml"
    proc = bench("run", str(scenario), "-d", "1s", "-q", "--set", override, "--out", str(tmp_path / "r.arrow"),
                 cwd=tmp_path)
    assert_input_error(proc, f"{scenario}: {key}: ")


QUICK = str(ROOT / "scenarios" / "quickstart.toml")
MASTER = ["run", QUICK, "-q", "--locust-master"]


@pytest.mark.parametrize(("argv", "words"), [
    # were tracebacks (exit 1): a socket's OverflowError, ZeroMQ, numpy, a 21 TiB allocation
    ([*MASTER, "--master-bind-port", "99999"], ("--master-bind-port", "1..65535")),
    ([*MASTER, "--master-bind-port=-1"], ("--master-bind-port", "1..65535")),
    (["calibrate", "--url", "http://127.0.0.1:99999/"], ("--url", "Port out of range")),
    (["locust-worker", "--master-port=-1"], ("--master-port", "1..65535")),
    (["serve", "--seed", "-1"], ("--seed", "got -1")),
    (["data", "ccfraud", "--rows", "10", "--seed=-1", "--out", "x.arrow"], ("--seed", "got -1")),
    (["data", "ccfraud", "--rows", "100000000000", "--out", "x.arrow"], ("--rows", "1..1,000,000")),
    # hung, or failed only after the run had started
    ([*MASTER, "--worker-wait", "nan"], ("--worker-wait", "finite")),
    ([*MASTER, "--worker-wait", "inf"], ("--worker-wait", "finite")),
    ([*MASTER, "--worker-wait=-1"], ("--worker-wait", "> 0")),
    ([*MASTER, "--locust-web-port", "99999"], ("--locust-web-port", "0..65535")),
    (["locust-worker", "--master-port", "99999"], ("--master-port", "1..65535")),
    # the embedded emulator died with SIGABRT (exit 3, "exited with code -6"), or the JSON line to it overflowed
    (["run", QUICK, "-q", "--set", "emulator.seed=-1"], ("quickstart.toml: emulator.seed:", "got -1")),
    (["run", QUICK, "-q", "--set", "emulator.host=0.0.0.0"], ("quickstart.toml: emulator.host:", "loopback")),
    (["run", QUICK, "-q", "--set", "emulator.ubiops_max_batch_timeout_s=99999999999999999999"],
     ("emulator.ubiops_max_batch_timeout_s:", "out of range")),
    (["run", QUICK, "-q", "--set", "emulator.latency_ms=1e300"], ("emulator.latency_ms:", "at most")),
    (["run", QUICK, "-q", "--set", "emulator.workspace_id=-1"], ("emulator.workspace_id:", ">= 0")),
    (["run", QUICK, "-q", "--set", 'emulator.client_secret=""'], ("emulator.client_secret:", "empty")),
    # messages that misled (the exit code was right): 0 is refused too, so "must be >= 0" was wrong; ...
    (["serve", "--token-ttl", "-5"], ("--token-ttl", "> 0")),
    (["serve", "--fault", "5xx:0.1:burst=-1"], ("--fault", "burst must be >= 1")),
    (["run", QUICK, "-q", "--set", "load.concurrency=-3"], ("load.concurrency", "must be >= 1, got -3")),
    (["capacity", QUICK, "-q", "--precision", "0"], ("--precision", "> 0 %")),
    # ... a whole number out of range is not "expected an integer", nan not "must be >= 0" ...
    (["run", QUICK, "-q", "--set", "load.concurrency=1e9"], ("load.concurrency", "must be <= 100,000")),
    (["compare", "a.arrow", "b.arrow", "--max-regression", "p99=nan%"], ("--max-regression", "finite")),
    # ... a directory is not "file not found", an empty string not "got str"
    (["run", QUICK, "-q", "--set", 'data.path="."'], ("data.path", "is a directory")),
    (["run", "--url", "http://127.0.0.1:9/x", "--body", ".", "-q"], ("data.body", "is a directory")),
    (["run", str(ROOT / "scenarios" / "kserve.toml"), "-q", "--set", "target.model_name=''"],
     ("target.model_name", "got an empty string")),
    # ... an empty --url was "give a scenario file", an empty --out the default path (the run went ahead) ...
    (["run", "--url", "", "--body", "b.json", "-q"], ("--url", "must not be empty")),
    (["calibrate", "--url", ""], ("--url", "must not be empty")),
    (["data", "ccfraud", "--out", ""], ("--out", "must not be empty")),
    (["merge", "a.arrow", "b.arrow", "-o", ""], ("--out", "must not be empty")),
    # ... `-d -1s` was "expected one argument", and `-d=-1s` "cannot read '-1s' as a duration" ...
    (["run", QUICK, "-q", "-d", "-1s"], ("load.duration", "must be >= 0, got '-1s'")),
    (["run", QUICK, "-q", "-d=-1s"], ("load.duration", "must be >= 0, got '-1s'")),
    # ... a stage without a duration "must last > 0 s in total", a bare `bench data` the whole usage block
    (["run", QUICK, "-q", "--set", "load.stages=[{rate=10}]", "--set", "load.concurrency=0"],
     ("load.stages[0].duration", "missing")),
    (["data"], ("bench data", "DATASET", "ccfraud")),
])
def test_bad_flag_and_emulator_values(tmp_path: Path, argv: list[str], words: tuple[str, ...]) -> None:
    proc = bench(*argv, "--out", str(tmp_path / "r.arrow"), cwd=tmp_path) if argv[0] == "run" else \
        bench(*argv, cwd=tmp_path)
    assert_input_error(proc, *words)
    assert not (tmp_path / "x.arrow").exists()


@pytest.fixture
def endless(tmp_path: Path) -> Iterator[dict[str, Path]]:
    """Inputs that never end: a FIFO whose writer (this test) never closes, and a character device with /dev/zero's
    numbers, made under tmp_path (never the real /dev/zero)."""
    fifo, zero = tmp_path / "fifo", tmp_path / "zero"
    os.mkfifo(fifo)
    os.mknod(zero, stat.S_IFCHR | 0o600, os.makedev(1, 5))
    writer = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)  # a writer that stays: a read of the FIFO never sees EOF
    try:
        yield {"fifo": fifo, "zero": zero}
    finally:
        os.close(writer)


def _memory_cap() -> None:
    """The old code read the device until memory ran out: a cap makes that a quick failure, not a swapping host."""
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))


_ENDLESS = "http://127.0.0.1:9/x"


@pytest.mark.parametrize(("node", "argv", "words"), [
    ("zero", ["run", "{node}"], ("{node}: is a character device, not a file",)),
    ("fifo", ["run", "{node}"], ("{node}: is a FIFO, not a file",)),
    ("zero", ["run", QUICK, "--set", 'data.path="{node}"'], ("data.path: {node}: is a character device",)),
    ("fifo", ["run", "--url", _ENDLESS, "--body", "{node}"], ("data.body: {node}: is a FIFO",)),
    ("fifo", ["run", QUICK, "--set", 'engine.ca_bundle="{node}"'], ("engine.ca_bundle", "{node}: is a FIFO")),
    ("fifo", ["report", "{node}"], ("{node}: is a FIFO, not a file",)),
    ("fifo", ["compare", "{node}", "{node}"], ("{node}: is a FIFO, not a file",)),
    ("fifo", ["calibrate", "--url", _ENDLESS, "--body", "{node}"], ("{node}: is a FIFO, not a file",)),
    ("fifo", ["recover", "{ckpt}"], ("is a FIFO, not a file",)),
])
def test_endless_inputs_are_refused_up_front(tmp_path: Path, endless: dict[str, Path], node: str,
                                             argv: list[str], words: tuple[str, ...]) -> None:
    """`bench run /dev/zero` read forever, memory growing, and a FIFO blocked the read (input audit)."""
    path = endless[node]
    if argv[0] == "recover":  # the checkpoint beside run.arrow is the FIFO
        os.rename(path, tmp_path / ".run.arrow.checkpoint")
    fill = {"node": str(path), "ckpt": str(tmp_path / "run.arrow")}
    args = [a.format(**fill) for a in argv]
    if args[0] == "run":
        args += ["-q", "-d", "1s", "--out", str(tmp_path / "r.arrow")]
    proc = bench(*args, cwd=tmp_path, preexec_fn=_memory_cap, timeout=30)
    assert_input_error(proc, *(w.format(**fill) for w in words))


def test_a_token_file_that_is_a_fifo_is_refused(tmp_path: Path, endless: dict[str, Path]) -> None:
    fifo = endless["fifo"]
    (tmp_path / "b.json").write_text("{}")
    (tmp_path / "s.toml").write_text(
        f'[target]\nkind = "http"\nurl = "{_ENDLESS}"\n[data]\nbody = "b.json"\n[load]\nconcurrency = 1\n'
        f'duration = "1s"\n[auth]\nkind = "static"\ntoken_file = "{fifo}"\n')
    proc = bench("run", "s.toml", "-q", "--out", str(tmp_path / "r.arrow"), cwd=tmp_path, timeout=30)
    assert_input_error(proc, "auth.token_file", f"{fifo}: is a FIFO, not a file")


def test_an_empty_out_is_refused_not_the_default_path(tmp_path: Path) -> None:
    """`--out ''` (an unset shell variable) ran the load and wrote the report under reports/ instead."""
    assert_input_error(bench("run", QUICK, "-q", "-d", "1s", "--out", "", cwd=tmp_path), "--out", "must not be empty")
    assert not (tmp_path / "reports").exists()


def test_calibrate_refuses_connections_beyond_the_open_file_limit(tmp_path: Path) -> None:
    """As `bench run` does, up front: calibrate ran ~18 s of failing connects before saying so (exit 3)."""
    import resource

    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))

    proc = bench("calibrate", "--connections", "1000", "--duration", "1s", cwd=tmp_path, preexec_fn=low_limit)
    assert_input_error(proc, "--connections", "open-file limit 256")


def test_unresolvable_master_host_gives_up(tmp_path: Path) -> None:
    """ZeroMQ retried a name it could not resolve forever ("Error resolving address" over and over). 'a..b' fails
    in the resolver's own encoding, before any query leaves this host."""
    proc = bench("locust-worker", "--master-host", "a..b", cwd=tmp_path)
    assert proc.returncode == 3, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "--master-host" in proc.stderr and "'a..b'" in proc.stderr


@pytest.mark.parametrize(("header", "words"), [
    ('{"bench_checkpoint": 1, "start_unix_ns": "abc", "meta": {}}', ("damaged checkpoint", "'abc'")),
    ('{"bench_checkpoint": 1, "start_unix_ns": 1, "meta": null}', ("damaged checkpoint",)),
])
def test_recover_a_checkpoint_with_wrong_types(tmp_path: Path, header: str, words: tuple[str, ...]) -> None:
    ckpt = tmp_path / ".run.arrow.checkpoint"
    ckpt.write_text(header + '\n{"elapsed_s": 1.0, "series": [], "totals": {}}\n')
    proc = bench("recover", str(tmp_path / "run.arrow"), cwd=tmp_path)
    assert_input_error(proc, str(ckpt), *words)
    assert not (tmp_path / "run.arrow").exists()


def test_embedded_emulator_child_fails_with_its_own_line(tmp_path: Path) -> None:
    """An error in the embedded emulator's process (`bench serve --config-stdin`, its parent still attached) was a
    "Fatal Python error" and SIGABRT, so its parent said only "exited with code -6" and a C stack line."""
    import socket

    out, err = tmp_path / "out", tmp_path / "err"
    with socket.socket() as busy, out.open("wb") as out_f, err.open("wb") as err_f:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        child = subprocess.Popen([sys.executable, "-m", "bench", "serve", "--config-stdin"], cwd=tmp_path,
                                 stdin=subprocess.PIPE, stdout=out_f, stderr=err_f,
                                 env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert child.stdin is not None
        try:
            child.stdin.write(b'{"port": %d}\n' % port)
            child.stdin.flush()
            child.wait(timeout=60)  # stdin still open, as the parent keeps it: closing it would stop the child
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
            child.stdin.close()
    proc = subprocess.CompletedProcess(child.args, child.returncode, out.read_text(), err.read_text())
    assert_input_error(proc, "--port", f"cannot listen on 127.0.0.1:{port}")


def test_scenario_with_a_utf8_bom_is_read(tmp_path: Path) -> None:
    """Windows Notepad's byte-order mark was "not valid TOML: Invalid statement (at line 1, column 1)"."""
    p = tmp_path / "bom.toml"
    p.write_bytes(b"\xef\xbb\xbf" + b'[target]\nurl = "embedded"\n[load]\nconcurrency = 0\n')
    assert_input_error(bench("run", str(p), "-q", cwd=tmp_path), f"{p}: load.concurrency: must be >= 1")


def test_empty_token_variable_is_called_empty(tmp_path: Path) -> None:
    body = tmp_path / "b.json"
    body.write_text("{}")
    proc = bench("run", "--url", "http://127.0.0.1:9/x", "--body", str(body), "-q", "--set",
                 "target.token_env=BENCH_TEST_EMPTY_TOKEN", cwd=tmp_path, env={"BENCH_TEST_EMPTY_TOKEN": "  "})
    assert_input_error(proc, "target.token_env", "BENCH_TEST_EMPTY_TOKEN is empty")


def test_compare_names_a_capacity_report(tmp_path: Path) -> None:
    """`bench report` reads capacity.arrow; `bench compare` called it "not a bench report"."""
    cap = tmp_path / "capacity.arrow"
    table = pa.table({"x": [1]}).replace_schema_metadata({b"bench.capacity_version": b"1"})
    with pa.OSFile(str(cap), "wb") as f, pa.ipc.new_file(f, table.schema) as w:
        w.write_table(table)
    assert_input_error(bench("compare", str(cap), str(cap), cwd=tmp_path), str(cap), "a capacity report",
                       "step-*.arrow")


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("summary") / "q.arrow"
    proc = bench("run", QUICK, "-q", "-d", "0.5s", "--warmup", "0s", "--out", str(out), cwd=out.parent)
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.mark.parametrize("command", ["report", "compare"])
@pytest.mark.parametrize("summary", ["dir", "missing/summary.md"])
def test_unwritable_step_summary_is_a_warning(quick_report: Path, tmp_path: Path, command: str,
                                              summary: str) -> None:
    """As `bench run`: the command's own result stands (a traceback and exit 1 — "regression" to a CI gate that
    runs `bench compare` — before)."""
    (tmp_path / "dir").mkdir()
    reports = [str(quick_report)] * (2 if command == "compare" else 1)
    proc = bench(command, *reports, cwd=tmp_path, env={"GITHUB_STEP_SUMMARY": str(tmp_path / summary)})
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    assert command == "report" or "no regression" in proc.stdout, proc.stdout
    assert proc.stderr.strip() == f"bench: warning: cannot append to $GITHUB_STEP_SUMMARY: " \
        f"{'Is a directory' if summary == 'dir' else 'No such file or directory'}", proc.stderr


def test_bad_capacity_table(tmp_path: Path) -> None:
    sc = tmp_path / "c.toml"
    sc.write_text('[target]\nurl = "embedded"\n[capacity]\nprecison = "5%"\n')
    assert_input_error(bench("capacity", str(sc), "-q", cwd=tmp_path), "capacity.precison", "did you mean")


def _mutate(data: bytes, edits: list[tuple[int, int]]) -> bytes:
    buf = bytearray(data)
    for pos, byte in edits:
        buf[pos % len(buf)] = byte
    return bytes(buf)


@settings(max_examples=4, deadline=None, suppress_health_check=list(HealthCheck))
@given(edits=st.lists(st.tuples(st.integers(0, 10_000), st.sampled_from(b"=[]\"'\n.{}#\xff0-x ")),
                      min_size=1, max_size=6))
def test_fuzzed_scenarios_through_the_cli(tmp_path_factory: pytest.TempPathFactory,
                                          edits: list[tuple[int, int]]) -> None:
    """Mutated copies of the quickstart that the reader refuses in-process are refused the same way by the CLI."""
    tmp = tmp_path_factory.mktemp("fuzzcli")
    original = ROOT / "scenarios" / "quickstart.toml"
    p = tmp / "quickstart.toml"
    p.write_bytes(_mutate(original.read_bytes(), edits))
    (tmp / "ccfraud.df.json").write_bytes((ROOT / "data" / "ccfraud_1k.df.json").read_bytes())
    p.write_bytes(p.read_bytes().replace(b"../data/ccfraud_1k.df.json", b"ccfraud.df.json"))
    try:
        load_scenario(p)
        problem = None
    except InputError as exc:
        problem = exc.problem
    assume(problem is not None)  # a mutation that is still a valid scenario is not run (it would load for real)
    assert problem is not None
    assert_input_error(bench("run", str(p), "-q", "-d", "0.5s", cwd=tmp), problem[:40])
