"""Every bench module imports cleanly on its own and exports only names it defines (``__all__``)."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys

import pytest

import bench

# bench.locust imports locust, which monkey-patches gevent into the importing process: checked in a subprocess
# by tests/unit/test_locust_imports.py, never imported into the test process.
MODULES = sorted(m.name for m in pkgutil.walk_packages(bench.__path__, "bench.")
                 if not m.name.endswith("__main__") and not m.name.startswith("bench.locust"))


@pytest.mark.parametrize("name", MODULES)
def test_all_names_exist(name: str) -> None:
    module = importlib.import_module(name)
    for exported in getattr(module, "__all__", ()):
        assert hasattr(module, exported), f"{name}.__all__ names {exported!r}, which does not exist"


def test_cli_help_is_fast_and_imports_no_heavy_parts() -> None:
    """`bench --help` must not import pyarrow, numpy, httpx or locust (they load only where used)."""
    code = ("import sys; from bench.cli import build_parser; build_parser(); "
            "heavy = [m for m in ('pyarrow', 'numpy', 'httpx', 'locust', 'gevent') if m in sys.modules]; "
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""


def test_run_http2_help_names_the_engine_a_run_gets() -> None:
    """`bench run --help` said --http2 ran on the httpx engine; auto picks the lean h2 engine (README: Engines)."""
    import argparse

    from bench.cli import build_parser
    from bench.engine.base import EngineConfig
    from bench.engine.select import choose_engine

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    help_text = next(a.help for a in sub.choices["run"]._actions if "--http2" in a.option_strings) or ""
    assert choose_engine(EngineConfig(http2=True), "http://127.0.0.1/").__name__ == "H2Engine"
    assert "h2 engine" in help_text and "(httpx engine)" not in help_text
