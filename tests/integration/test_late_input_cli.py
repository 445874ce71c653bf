"""Bad input found by the run core itself (an unset headers_env / token_env variable) is refused before any
request reaches the target, in one line with exit 2, and leaves no open file behind (run under `python -X dev`,
which reports an unclosed file on stderr)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.locust_cluster import recording_target

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def target() -> Iterator[tuple[str, list[tuple[str, str]]]]:
    with recording_target() as (url, seen):
        yield url, seen


@pytest.mark.parametrize("flags", [["--header-env", "X-Api-Key: BENCH_TEST_UNSET_VAR"],
                                   ["--set", 'target.token_env="BENCH_TEST_UNSET_VAR"']])
def test_unset_secret_variable_is_refused_before_any_request(tmp_path: Path, target: tuple[str, list[str]],
                                                             flags: list[str]) -> None:
    url, seen = target
    body = tmp_path / "b.json"
    body.write_text("{}")
    out = tmp_path / "r.arrow"
    env = {k: v for k, v in os.environ.items() if k != "BENCH_TEST_UNSET_VAR"}
    proc = subprocess.run([sys.executable, "-X", "dev", "-m", "bench", "run", "--url", url, "--body", str(body),
                           *flags, "-d", "1s", "-q", "--out", str(out)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "BENCH_TEST_UNSET_VAR" in lines[0] and "is not set" in lines[0], proc.stderr
    assert seen == []  # nothing reached the target
    assert not out.exists() and not list(tmp_path.glob(".*checkpoint"))


_TOKEN = "s3cr3t-T0ken-value"


@pytest.mark.parametrize(("where", "value"), [
    ("env", _TOKEN[:6] + "\n" + _TOKEN[6:]),           # a line break inside the token
    ("env", _TOKEN[:6] + "\u00e9" + _TOKEN[6:]),       # not ASCII: the engines cannot send it
    ("header_env", _TOKEN + "\r\nX-Injected: 1"),       # a header value spanning two lines
    ("file", (_TOKEN + "\n" + _TOKEN).encode()),        # a token file of two lines
    ("file", b"\xff\xfe" + _TOKEN.encode()),            # a token file that is not UTF-8 text
])
def test_unsendable_secret_is_refused_before_any_request(tmp_path: Path, target: tuple[str, list[str]],
                                                         where: str, value: str | bytes) -> None:
    """A token (variable or file) that cannot be an HTTP header value is one line, exit 2, the secret not
    echoed, nothing sent: it used to crash in the engine with a traceback (or fail every request as `other`)."""
    url, seen = target
    body = tmp_path / "b.json"
    body.write_text("{}")
    out = tmp_path / "r.arrow"
    env = dict(os.environ)
    if where == "file":
        assert isinstance(value, bytes)
        (tmp_path / "tok").write_bytes(value)
        (tmp_path / "s.toml").write_text(
            f'name = "t"\n[target]\nkind = "http"\nurl = "{url}"\n[data]\nbody = "b.json"\n'
            '[load]\nconcurrency = 1\nduration = "1s"\n[auth]\nkind = "static"\ntoken_file = "tok"\n')
        args = ["s.toml"]
    else:
        assert isinstance(value, str)
        env["BENCH_TEST_TOKEN"] = value
        flag = ["--set", 'target.token_env="BENCH_TEST_TOKEN"'] if where == "env" else \
            ["--header-env", "X-Api-Key: BENCH_TEST_TOKEN"]
        args = ["--url", url, "--body", str(body), *flag]
    proc = subprocess.run([sys.executable, "-m", "bench", "run", *args, "-d", "1s", "-q", "--out", str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert ("token_file" if where == "file" else "BENCH_TEST_TOKEN") in lines[0]
    assert _TOKEN[:6] not in proc.stderr + proc.stdout and _TOKEN[6:] not in proc.stderr + proc.stdout
    assert seen == []  # nothing reached the target
    assert not out.exists()


def test_an_unusable_report_dir_names_the_scenario_key_not_out(tmp_path: Path) -> None:
    """[report] dir that cannot be made was reported as a bad `--out`, a flag the user never gave."""
    (tmp_path / "afile").write_text("")
    scenario = tmp_path / "s.toml"
    scenario.write_text('name = "t"\n[target]\nurl = "embedded"\n[load]\nconcurrency = 1\nduration = "1s"\n'
                        '[report]\ndir = "afile/sub"\n')
    proc = subprocess.run([sys.executable, "-m", "bench", "run", str(scenario), "-q"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{scenario}: report.dir: " in lines[0] and "--out" not in lines[0], proc.stderr
