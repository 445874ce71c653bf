"""End-to-end secret-leak test: `bench run` with known secrets, then search every byte the run wrote.

Secrets come in through environment variables only; the embedded emulator requires (and issues) short-lived
tokens so refreshes happen during the run. Every file the run created (the Arrow report is zstd-compressed,
so it is also decoded), stdout and stderr are searched for the secrets, their common encodings (URL-encoded,
the HTTP Basic blob) and anything shaped like an issued token.
"""

from __future__ import annotations

import base64
import importlib.util
import os
import re
import secrets
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "data" / "ccfraud_1k.df.json"
JWT = re.compile(rb"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}")

pytestmark = pytest.mark.skipif(importlib.util.find_spec("bench.commands.run") is None,
                                reason="bench run is not available yet")

SCENARIO = """\
name = "secret-leak"

[target]
kind = "wallaroo"
url = "embedded"
format = "pandas-records"

[auth]
{auth}

[data]
path = "data/ccfraud_1k.df.json"
rows_per_request = 10

[load]
concurrency = 4
duration = "3s"
warmup = "0s"

[emulator]
require_token = true
token_ttl_s = 2
"""

AUTH = {
    "client_credentials": 'kind = "client_credentials"\nclient_id = "api-client"\n'
                          'client_secret_env = "BENCH_TEST_CLIENT_SECRET"',
    "password": 'kind = "password"\nclient_id = "api-client"\nclient_secret_env = "BENCH_TEST_CLIENT_SECRET"\n'
                'username_env = "BENCH_TEST_USERNAME"\npassword_env = "BENCH_TEST_PASSWORD"',
}


def _decoded_arrow(path: Path) -> bytes:
    """The text of every value and metadata entry of an Arrow IPC file/stream ('' if it is not one)."""
    import pyarrow as pa
    import pyarrow.ipc

    for opener in (pyarrow.ipc.open_file, pyarrow.ipc.open_stream):
        try:
            table = opener(pa.OSFile(str(path))).read_all()
        except (pa.ArrowInvalid, OSError):
            continue
        parts = [repr(table.schema.metadata), *(repr(f.metadata) for f in table.schema)]
        parts += [repr(column.to_pylist()) for column in table.columns]
        return "\n".join(parts).encode()
    return b""


def _needles(values: list[str]) -> list[bytes]:
    out: set[bytes] = set()
    for value in values:
        for form in (value, quote(value, safe=""), quote_plus(value)):
            out.add(form.encode())
    return sorted(out, key=len, reverse=True)


@pytest.mark.parametrize("kind", ["client_credentials", "password"])
def test_no_secret_in_anything_the_run_writes(tmp_path: Path, kind: str) -> None:
    client_secret = f"cs-{secrets.token_urlsafe(18)}"
    password = f"pw-{secrets.token_urlsafe(18)}"
    (tmp_path / "data").mkdir()
    shutil.copy(DATA, tmp_path / "data" / DATA.name)
    (tmp_path / "scenario.toml").write_text(SCENARIO.format(auth=AUTH[kind]))
    before = {p for p in tmp_path.rglob("*")}
    env = dict(os.environ, BENCH_TEST_CLIENT_SECRET=client_secret, BENCH_TEST_USERNAME="loadtester",
               BENCH_TEST_PASSWORD=password, HOME=str(tmp_path), XDG_CACHE_HOME=str(tmp_path / ".cache"),
               PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "bench", "run", "scenario.toml", "--out", "report.arrow"],
                          cwd=tmp_path, env=env, capture_output=True, timeout=90, check=False)

    basic = base64.b64encode(f"api-client:{client_secret}".encode()).decode()
    needles = _needles([client_secret, password, basic])
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p not in before]
    haystacks: dict[str, bytes] = {"stdout": proc.stdout, "stderr": proc.stderr}
    for path in written:
        haystacks[str(path.relative_to(tmp_path))] = path.read_bytes()
        decoded = _decoded_arrow(path)
        if decoded:
            haystacks[f"{path.relative_to(tmp_path)} (decoded)"] = decoded

    leaks = [(where, needle.decode()[:6] + "…") for where, data in haystacks.items() for needle in needles
             if needle in data]
    leaks += [(where, "token " + m.group(0)[:10].decode() + "…") for where, data in haystacks.items()
              for m in [JWT.search(data)] if m]
    assert not leaks, f"secrets leaked: {leaks}"
    stderr = proc.stderr.decode(errors="replace").replace(client_secret, "<secret>").replace(password, "<pw>")
    rc = proc.returncode
    assert rc == 0, f"bench run exited {rc}: {stderr[-2000:]}"
    assert any(p.suffix == ".arrow" for p in written), "no report written"
    assert any(k.endswith("(decoded)") for k in haystacks), "the report could not be decoded for searching"
