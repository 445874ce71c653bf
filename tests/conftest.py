"""Shared test fixtures: the anyio backend, the repository root, emulators and a TLS proxy in front of them."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import pytest

if TYPE_CHECKING:
    from tests.integration.locust_cluster import Cluster

ROOT = Path(__file__).resolve().parent.parent


# Real-process matrices that each take tens of seconds: kept out of the default run (README's test command, ~5 min
# on 2 cores) and run by .ci/run right after it with `-m slow`. Listed here by module (a single slow test in a fast
# module carries @pytest.mark.slow itself).
SLOW_MODULES = frozenset({
    "test_fault_matrix.py", "test_engine_fault_fuzz.py", "test_locust_distributed.py", "test_locust_users.py",
    "test_session_cli.py", "test_kserve_mlserver.py", "test_run_accounting.py",
    "test_durability.py", "test_ubiops_budget.py", "test_bad_input_cli.py", "test_ubiops_backoff_cli.py",
    "test_step_summary_cli.py",
})


def pytest_sessionstart(session: pytest.Session) -> None:
    """Runs made by the tests must not append to the CI job's own step summary (`bench run` writes it when set)."""
    import os

    os.environ.pop("GITHUB_STEP_SUMMARY", None)


@pytest.fixture(scope="session", autouse=True)
def _checkout_reports_untouched() -> Iterator[None]:
    """A test's runs write their reports under tmp_path (``--out``), never into the checkout's reports/: a default
    report dir there would pile up files across test runs (and a user's own reports could be mixed in)."""
    before = set((ROOT / "reports").glob("*.arrow"))
    yield
    added = sorted(p.name for p in set((ROOT / "reports").glob("*.arrow")) - before)
    for name in added:
        (ROOT / "reports" / name).unlink(missing_ok=True)
    assert not added, f"tests wrote reports into the checkout's reports/ (give them --out): {added}"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.name in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def repo_root() -> Path:
    return ROOT


@pytest.fixture
def serve_emulator() -> Iterator[Callable[..., str]]:
    """Start `bench serve --port 0 ARGS...` (a real emulator process on loopback); returns its base URL.

    Every emulator started through the fixture is stopped when the test ends, pass or fail.
    """
    procs: list[subprocess.Popen[str]] = []

    def start(*args: str) -> str:
        proc = subprocess.Popen([sys.executable, "-m", "bench", "serve", "--port", "0", *args], cwd=ROOT,
                                stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()  # the first line is printed once the socket listens
        assert line.startswith("bench emulator listening on http://127.0.0.1:"), line
        return line.split()[-1]

    try:
        yield start
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)


@pytest.fixture
def fault_emulator(serve_emulator: Callable[..., str]) -> Callable[..., str]:
    """Start `bench serve --fault SPEC ARGS...` (seeded by --seed, default 1); returns its base URL, stopped after
    the test like every serve_emulator. ``fault_emulator("stall:0.1,reset:0.05")``."""

    def start(spec: str, *args: str) -> str:
        return serve_emulator("--fault", spec, *args)

    return start


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """Real processes of one test (tests/integration/locust_cluster.py): every process group is killed at the
    end, pass or fail."""
    from tests.integration.locust_cluster import Cluster

    c = Cluster(tmp_path)
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def idle_loop() -> Iterator[asyncio.AbstractEventLoop]:
    """A new, never running event loop for engine parts tested without sockets; the tasks they started on it
    (connects) are cancelled and the loop closed at the end."""
    lp = asyncio.new_event_loop()
    try:
        yield lp
    finally:
        tasks = asyncio.all_tasks(lp)
        for t in tasks:
            t.cancel()
        if tasks:
            lp.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        lp.close()


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := src.recv(65536):
            dst.sendall(data)
    for s in (src, dst):
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def tls_proxy(tmp_path: Path) -> Iterator[Callable[[str], tuple[str, Path]]]:
    """``start(plain_base_url)`` -> (https base URL, the private CA's PEM file). Stopped after the test."""
    listeners: list[socket.socket] = []

    def start(plain: str) -> tuple[str, Path]:
        up = urlsplit(plain)
        import trustme

        ca = trustme.CA()
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1").configure_cert(ctx)
        ca_file = tmp_path / "private-ca.pem"
        ca.cert_pem.write_to_path(str(ca_file))
        lsock = socket.create_server(("127.0.0.1", 0))
        listeners.append(lsock)

        def accept() -> None:
            while True:
                try:
                    raw, _ = lsock.accept()
                except OSError:
                    return
                try:
                    tls = ctx.wrap_socket(raw, server_side=True)
                except (OSError, ssl.SSLError):  # a client that refused our certificate
                    raw.close()
                    continue
                back = socket.create_connection((up.hostname or "127.0.0.1", up.port or 80))
                threading.Thread(target=_pipe, args=(tls, back), daemon=True).start()
                threading.Thread(target=_pipe, args=(back, tls), daemon=True).start()

        threading.Thread(target=accept, daemon=True).start()
        return f"https://127.0.0.1:{lsock.getsockname()[1]}", ca_file

    try:
        yield start
    finally:
        for lsock in listeners:
            lsock.close()
